"""Running an evaluation: sample k completions per problem with the training prompt,
grade them with the training reward, and write per-problem records as they finish so an
interrupted run resumes where it stopped.

:func:`evaluate` is the library entry point (a model already in memory, one benchmark);
:func:`run_evaluation` is the driver behind ``sgpo eval`` (load the model once, several
benchmarks, results.json / results.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from sgpo.evaluation.metrics import macro_average, per_problem_accuracy, summarize
from sgpo.generation import Completion, Generator, SamplingConfig, make_generator
from sgpo.io import (DataError, append_jsonl, read_jsonl_tolerant, repair_jsonl_tail, write_json_atomic,
                     write_text_atomic)
from sgpo.prompts import PROMPT_FORMATS, PromptStyle, check_prompt_format
from sgpo.rewards.functions import RewardConfig, RewardFunctions, check_failure_share, failure_shares

RECORDS_DIR = "records"  # per-benchmark per-problem records: records/NAME.jsonl
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def config_hash(model_id: str, tokenizer: Any, sampling: SamplingConfig, num_samples: int,
                style: PromptStyle = PromptStyle(), weights: str = "", rewards: str = "") -> str:
    """Identity of everything besides the problem that determines its samples: model name,
    weights (:func:`sgpo.models.weights_fingerprint`), prompt (chat template and
    instruction, via a rendered placeholder), sampling, k and the reward functions when they are
    not the default (:meth:`sgpo.rewards.functions.RewardFunctions.identity`). The batch size
    is left out: it is a system knob."""
    prompt = style.render(tokenizer, "{problem}")
    fields = {"model": model_id, "prompt": prompt, "sampling": asdict(sampling), "k": num_samples, "weights": weights}
    if rewards:
        fields["rewards"] = rewards
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def input_hash(problem: dict[str, str]) -> str:
    """Identity of what a record was graded on: problem text, gold answer and strategy."""
    blob = json.dumps([problem["problem"], problem["answer"], problem.get("strategy")], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def records_path(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / RECORDS_DIR / f"{name}.jsonl"


def _validate(problems: Sequence[dict[str, Any]], name: str) -> list[dict[str, str]]:
    """Check ids, problems and answers up front; a bad row is a DataError naming it."""
    if not problems:
        raise DataError(name, "no problems to evaluate")
    out, seen = [], set()
    for row, p in enumerate(problems, start=1):
        for key in ("id", "problem", "answer"):
            if p.get(key) is None or not str(p[key]).strip():
                raise DataError(name, "missing or empty", row=row, field=key)
            if isinstance(p[key], float) and not math.isfinite(p[key]):
                raise DataError(name, f"{p[key]} is not a usable value (a missing cell read as NaN?)", row=row, field=key)
        pid = str(p["id"])
        if pid in seen:
            raise DataError(name, f"duplicate id '{pid}'", row=row, field="id")
        seen.add(pid)
        rec = {"id": pid, "problem": str(p["problem"]), "answer": str(p["answer"])}
        if p.get("strategy"):  # evaluation with guidance (the demo's p_g measurement)
            rec["strategy"] = str(p["strategy"])
        out.append(rec)
    return out


def grade_problems(problems: list[dict[str, str]], outputs: list[list[Completion]], name: str, chash: str,
                   seed: int | None, rewards: RewardFunctions) -> tuple[list[dict[str, Any]], dict[str, list[bool]]]:
    """Per-problem records (the completions and their grades), every completion graded in one
    concurrent batch by ``rewards`` (the training reward); and each function's failed calls."""
    texts = [c.text for outs in outputs for c in outs]
    answers = [p["answer"] for p, outs in zip(problems, outputs) for _ in outs]
    rows = [p for p, outs in zip(problems, outputs) for _ in outs]
    graded = rewards.grade(texts, answers, rows)
    records, start = [], 0
    for problem, completions in zip(problems, outputs):
        part = slice(start, start + len(completions))
        start += len(completions)
        details = graded.details[part]
        rec = {
            "benchmark": name, "id": problem["id"], "config_hash": chash, "input_hash": input_hash(problem),
            "seed": seed, "problem": problem["problem"], "answer": problem["answer"],
            "completions": [c.text for c in completions],
            "extracted": [d.extracted if d else None for d in details],
            "scores": graded.rewards[part],
            "timed_out": [bool(d and d.timed_out) for d in details],
            "finish_reasons": [c.finish_reason for c in completions],
            "lengths": [len(c.token_ids) for c in completions],
        }
        if rewards.identity():  # functions of the user's own: each one's value (None: not applicable or failed)
            rec["rewards"] = {n: v[part] for n, v in graded.values.items()}
        records.append(rec)
    return records, graded.failed


def load_finished(path: Path, chash: str, rows: Sequence[dict[str, str]]) -> tuple[dict[str, dict[str, Any]], int]:
    """Records of an earlier run that still hold, by problem id: same config hash (model,
    weights, prompt, sampling, k) and same problem, answer and strategy. Returns them and
    how many problems have only records that no longer hold (they are generated again). A
    torn last line from a kill is cut off so appending can continue."""
    repair_jsonl_tail(path)
    want = {p["id"]: input_hash(p) for p in rows}
    done, stale = {}, set()
    for r in read_jsonl_tolerant(path):
        pid = str(r.get("id"))
        if pid not in want:
            continue
        if r.get("config_hash") == chash and r.get("input_hash") == want[pid]:
            done[pid] = r
        else:
            stale.add(pid)
    return done, len(stale - done.keys())


def evaluate_records(model: Any, tokenizer: Any, problems: Sequence[dict[str, Any]], name: str,
                     sampling: SamplingConfig, num_samples: int, generator: Generator | None = None,
                     output_dir: str | Path | None = None, batch_size: int = 32, *, model_id: str | None = None,
                     show_progress: bool = True, grader_timeout_s: float = 5.0,
                     style: PromptStyle = PromptStyle(),
                     reward: RewardConfig | None = None) -> tuple[dict[str, Any], list[dict]]:
    """:func:`evaluate`, also returning the per-problem records in problem order."""
    rows = _validate(problems, name)
    rewards = RewardFunctions(reward, grader_timeout_s)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 (got {num_samples})")
    gen = generator or make_generator("hf", model, tokenizer, batch_size=batch_size)
    from sgpo.models import weights_fingerprint

    mid = model_id or str(getattr(getattr(model, "config", None), "_name_or_path", "") or model)
    chash = config_hash(mid, tokenizer, sampling, num_samples, style, weights_fingerprint(model), rewards.identity())
    path = records_path(output_dir, name) if output_dir is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    done, stale = load_finished(path, chash, rows) if path is not None else ({}, 0)
    reused = sum(p["id"] in done for p in rows)
    # Problems per generate call, grouped by prompt length: left padding to the longest
    # prompt of a call is pure waste, and on CPU prefill dominates short generations. The
    # grouping depends only on the problem list, so seeds (seed + position of the call's
    # first problem in that order) do not depend on what an interrupted run finished.
    per_call = max(1, batch_size // num_samples)
    prompt_of = {p["id"]: style.render(tokenizer, p["problem"], p.get("strategy")) for p in rows}
    ordered = sorted(rows, key=lambda p: len(prompt_of[p["id"]]))  # stable: ties keep file order
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), initial=sum(r["id"] in done for r in rows), desc=f"eval {name}", unit="problem",
               disable=not show_progress)
    failed: dict[str, list[bool]] = {n: [] for n in rewards.names}
    for start in range(0, len(ordered), per_call):
        todo = [p for p in ordered[start : start + per_call] if p["id"] not in done]
        if not todo:
            continue
        seed = None if sampling.seed is None else sampling.seed + start
        prompts = [prompt_of[p["id"]] for p in todo]
        outputs = gen.generate(prompts, replace(sampling, seed=seed), n=num_samples)
        new, batch_failed = grade_problems(todo, outputs, name, chash, seed, rewards)
        for n, f in batch_failed.items():
            failed[n] += f
        # before the records are written: a broken function must not leave records that look finished
        check_failure_share(failure_shares(failed), rewards.cfg.max_failure_share, f"evaluating {name} so far")
        if path is not None:
            append_jsonl(path, new)
        done.update((r["id"], r) for r in new)
        bar.update(len(new))
    bar.close()
    records = [done[p["id"]] for p in rows]
    summary = {**summarize(records, k=num_samples), "reused": reused, "stale": stale}
    summary["reward_failures"] = sum(sum(f) for f in failed.values())
    return summary, records


def evaluate(model: Any, tokenizer: Any, problems: Sequence[dict[str, Any]], name: str, sampling: SamplingConfig,
             num_samples: int, generator: Generator | None = None, output_dir: str | Path | None = None,
             batch_size: int = 32, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a model in memory on one benchmark and return its result dict
    (``n, k, avg@k, pass@k, ci95, truncation_rate, mean_length, timeouts, reused, stale``).

    ``problems`` are dicts with ``id``, ``problem`` and ``answer``. Without ``generator``
    an HF batched generator is built from ``model`` and ``tokenizer``. With ``output_dir``
    per-problem records are appended to ``records/NAME.jsonl`` and finished problems are
    not generated again as long as the model's weights (a fingerprint), the prompt, the
    sampling, k and the problem's text and answer are unchanged; ``reused`` and ``stale``
    in the result count the records kept and those regenerated because something changed.
    Keyword options: ``model_id`` (names the model in the records), ``show_progress``,
    ``grader_timeout_s``, ``style``."""
    result, _ = evaluate_records(model, tokenizer, problems, name, sampling, num_samples, generator, output_dir,
                                 batch_size, **kwargs)
    return result


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``sgpo eval`` needs. ``protocol`` (:mod:`sgpo.evaluation.protocols`) sets the
    sampling and k; a value given here overrides it (``None``: the protocol's)."""

    model: str  # local folder, Hub id or the smollm2-135m-instruct alias
    benchmarks: tuple[str, ...]  # built-in names or JSONL/Parquet paths
    output_dir: str = "eval"
    protocol: str = "default"  # default | luffy
    num_samples: int | None = None  # k for every benchmark; None: the protocol's k per benchmark
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    data_dir: str | None = None  # folder with NAME.jsonl for built-in names ($SGPO_DATA_DIR)
    backend: str = "hf"  # hf | vllm
    batch_size: int | None = None  # sequences per generate call; None: 32 (hf) or 1024 (vllm)
    limit: int = 0  # first N problems per benchmark (0: all)
    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: str = "id"
    dtype: str = "auto"
    grader_timeout_s: float = 5.0
    show_progress: bool = True
    train_config: str | None = None  # a run's config.json or YAML: evaluate with its prompt format and reward
    prompt_format: str = ""  # chat | plain; "" = the training config's (data.prompt_format), else chat
    reward_functions: tuple[str, ...] = ()  # module:callable; () = the training config's, else the math grader
    reward_weights: tuple[float, ...] = ()  # one per reward function; () = 1.0 each

    def k(self, benchmark: str) -> int:
        """Samples per problem of a benchmark (by its name): ``num_samples``, else the protocol's."""
        from sgpo.evaluation.protocols import get_protocol

        return self.num_samples or get_protocol(self.protocol).k(benchmark)

    def validate(self) -> "EvalConfig":
        """This config with the protocol's sampling filled in where none was given, checked:
        one-line UserErrors naming the option, before any data or model is read."""
        from sgpo.errors import UserError
        from sgpo.evaluation.protocols import PROTOCOLS
        from sgpo.models import DTYPES

        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol {self.protocol}: must be one of {', '.join(PROTOCOLS)}")
        p = PROTOCOLS[self.protocol]
        c = replace(self, temperature=p.temperature if self.temperature is None else self.temperature,
                    top_p=p.top_p if self.top_p is None else self.top_p,
                    max_new_tokens=p.max_new_tokens if self.max_new_tokens is None else self.max_new_tokens)
        checks = [
            ("--temperature", c.temperature, math.isfinite(c.temperature) and c.temperature >= 0,
             ">= 0 (0 = greedy)"),
            ("--top-p", c.top_p, math.isfinite(c.top_p) and 0 < c.top_p <= 1, "in (0, 1]"),
            ("--max-new-tokens", c.max_new_tokens, c.max_new_tokens >= 1, ">= 1"),
            ("--num-samples", c.num_samples, c.num_samples is None or c.num_samples >= 1, ">= 1"),
            ("--batch-size", c.batch_size, c.batch_size is None or c.batch_size >= 1, ">= 1"),
            ("--limit", c.limit, c.limit >= 0, ">= 0 (0 = all problems)"),
            ("grader_timeout_s", c.grader_timeout_s, math.isfinite(c.grader_timeout_s) and c.grader_timeout_s > 0,
             "> 0"),
            ("--dtype", c.dtype, c.dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
            ("--backend", c.backend, c.backend in ("hf", "vllm"), "hf or vllm"),
            ("--prompt-format", c.prompt_format, c.prompt_format in ("", *PROMPT_FORMATS), "chat or plain"),
        ]
        for option, value, ok, rule in checks:
            if not ok:
                raise UserError(f"{option} {value}: must be {rule}")
        if not c.benchmarks:
            raise UserError("--benchmarks: no benchmark given")
        return c


def prompt_style(train_config: str | None) -> PromptStyle:
    """The prompt format recorded in a training config (its ``data`` section), or the default
    one. Read as plain YAML/JSON so evaluation does not depend on the trainer."""
    if not train_config:
        return PromptStyle()
    import yaml

    path = Path(train_config)
    if not path.is_file():
        raise DataError(str(path), "training config not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"not a readable YAML/JSON config ({' '.join(str(e).split())[:200]})") from None
    data = raw.get("data", {}) if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        raise DataError(str(path), "expected a mapping with a 'data' section", field="data")
    try:
        return PromptStyle.from_data_config(data)
    except ValueError as e:
        raise DataError(str(path), str(e), field="data.fewshot") from None


def reward_config(cfg: EvalConfig) -> RewardConfig:
    """The reward of ``sgpo eval``: --reward-functions / --reward-weights, else the training
    config's ``reward`` section (--train-config), else the built-in math grader."""
    section: dict[str, Any] = {}
    if cfg.train_config:
        import yaml

        raw = yaml.safe_load(Path(cfg.train_config).read_text(encoding="utf-8")) or {}  # read by prompt_style first
        section = raw.get("reward") or {} if isinstance(raw, dict) else {}
        if not isinstance(section, dict):
            raise DataError(cfg.train_config, "expected a mapping", field="reward")
    if cfg.reward_functions:
        section = {**section, "functions": list(cfg.reward_functions), "weights": list(cfg.reward_weights)}
    elif cfg.reward_weights:
        section = {**section, "weights": list(cfg.reward_weights)}
    known = set(RewardConfig.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise DataError(cfg.train_config or "--reward-functions", f"unknown reward keys {unknown}", field="reward")
    try:
        return RewardConfig(**section).validate()
    except ValueError as e:
        raise DataError(cfg.train_config or "--reward-functions", str(e), field="reward") from None


def _load_generator(cfg: EvalConfig, batch_size: int, benches: Sequence[Any],
                    style: PromptStyle) -> tuple[Any, Any, Generator]:
    from sgpo.data import check_prompt_lengths
    from sgpo.models import context_length, load_model, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(cfg.model)
    check_prompt_format(tokenizer, style, cfg.model, "--prompt-format")
    context = context_length(cfg.model)
    for bench in benches:  # before the weights load
        check_prompt_lengths(((str(p["id"]), str(p["problem"]), p.get("strategy")) for p in bench.problems), style,
                             tokenizer, context, bench.name)
    if cfg.backend == "hf":
        model = load_model(cfg.model, dtype=cfg.dtype)
        return model, tokenizer, make_generator("hf", model, tokenizer, batch_size=batch_size)
    from sgpo.lora import MERGED_DIR
    from sgpo.models import adapter_base

    if adapter_base(cfg.model) is not None:
        from sgpo.errors import UserError

        raise UserError(f"--model {cfg.model} is a LoRA adapter folder; --backend {cfg.backend} needs merged weights: "
                        f"train with model.lora.save_merged=true and evaluate {MERGED_DIR}/ in it, or use --backend hf")
    path = resolve_model_path(cfg.model)
    return path, tokenizer, make_generator(cfg.backend, path, tokenizer)


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate one model on several benchmarks; writes results.json (after each
    benchmark, so partial results are visible), results.md and records/."""
    from sgpo.evaluation.benchmarks import load_benchmark
    from sgpo.io import ensure_writable_dir
    from sgpo.locks import folder_lock
    from sgpo.models import check_model_source

    cfg = cfg.validate()
    benches = [load_benchmark(b, data_dir_path=cfg.data_dir, problem_field=cfg.problem_field,
                              answer_field=cfg.answer_field, id_field=cfg.id_field, limit=cfg.limit)
               for b in cfg.benchmarks]  # all data checked before the model loads
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise DataError(", ".join(cfg.benchmarks), f"two benchmarks share a name ({names})")
    for bench in benches:
        _validate(bench.problems, bench.name)
    style = prompt_style(cfg.train_config)
    if cfg.prompt_format:
        style = replace(style, format=cfg.prompt_format)
    reward = reward_config(cfg)
    RewardFunctions(reward)  # a function that cannot be imported stops here, before the model loads
    check_model_source(cfg.model, "--model")
    out = Path(cfg.output_dir)
    ensure_writable_dir(out, "--output-dir")
    with folder_lock(out, "sgpo eval"):  # one writer per folder: no problem generated twice
        return _run_locked(cfg, benches, style, reward, out)


def _run_locked(cfg: EvalConfig, benches: list[Any], style: PromptStyle, reward: Any, out: Path) -> dict[str, Any]:
    from sgpo.evaluation.report import results_markdown

    batch_size = cfg.batch_size or (32 if cfg.backend == "hf" else 1024)
    model, tokenizer, generator = _load_generator(cfg, batch_size, benches, style)
    sampling = SamplingConfig(cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
    results: dict[str, Any] = {"benchmarks": {}, "macro": {}, "config": {**asdict(cfg), "benchmark_sources": {},
                                                                         "k": {}}}
    accuracies: dict[str, list[float]] = {}
    for bench in benches:
        k = cfg.k(bench.name)
        result, records = evaluate_records(model, tokenizer, bench.problems, bench.name, sampling, k, generator,
                                           out, batch_size, model_id=cfg.model, show_progress=cfg.show_progress,
                                           grader_timeout_s=cfg.grader_timeout_s, style=style, reward=reward)
        results["benchmarks"][bench.name] = result
        results["config"]["benchmark_sources"][bench.name] = bench.source
        results["config"]["k"][bench.name] = k
        accuracies[bench.name] = per_problem_accuracy([r["scores"] for r in records])
        results["macro"] = macro_average(results["benchmarks"], accuracies)
        write_json_atomic(out / RESULTS_JSON, results)
    write_text_atomic(out / RESULTS_MD, results_markdown(results))
    return results

