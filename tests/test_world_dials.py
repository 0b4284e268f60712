"""Issue 17's world knobs: trace styles render and grade, the one extractor derives the same
leak-free strategy from every style, the tokenizer (and so the cached model) covers every style
without growing, partial and wrong strategies come in the shares asked for, the pre-training
dials enter the cache key only when set, and the capability measures are what they say."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from sgpo.rewards import score
from sgpo.strategies.leaks import leak_reasons
from sgpo.world.pretrain import WORLDS, PretrainSpec, WorldConfig, seeded_world
from sgpo.world.styles import STYLES, extract_strategy, render_trace
from sgpo.world.tasks import Method, WorldSpec, corpus_texts, make_problems, pretrain_example
from sgpo.world.tokenizer import build_tokenizer

WORLD_SPECS = [WORLDS["single"], WORLDS["pair"]]
IDS = ["single", "pair"]


def _rows(spec: WorldSpec, split: str = "train", n: int = 96, seed: int = 0) -> list[dict]:
    return make_problems(spec, n, seed=seed, split=split)


@pytest.mark.parametrize("spec", WORLD_SPECS, ids=IDS)
def test_styles_render_and_grade_on_the_same_problems(spec):
    base = {s: _rows(spec, s) for s in ("train", "heldout")}
    for style in STYLES:
        for split, native in base.items():
            rows = _rows(replace(spec, trace_style=style), split)
            # the same problems and answers in every style; only the worked solution differs
            assert [(r["id"], r["problem"], r["answer"]) for r in rows] == \
                   [(r["id"], r["problem"], r["answer"]) for r in native]
            for r in rows:
                assert score(r["teacher_response"], r["answer"]) == 1.0, (style, r["teacher_response"])
                assert r.get("trace_style", "T0") == style
    m, kw, d = Method("reverse", 3), "mip tob", (7, 8, 2)
    rng = random.Random(0)
    pair = WORLDS["pair"]
    assert render_trace("T0", pair, m, kw, d, rng) == r"mip tob reverse add 3 : 2 8 7 -> 5 1 0 . \boxed{510}"
    assert render_trace("T1", pair, m, kw, d, rng) == r"mip tob reverse add 3 : 5 1 0 . \boxed{510}"
    assert render_trace("T2", pair, m, kw, d, rng) == r"mip tob : \boxed{510}"
    assert render_trace("T3", pair, m, kw, d, rng) == r"mip tob add 3 reverse : 0 1 5 -> 5 1 0 . \boxed{510}"
    with pytest.raises(ValueError, match="trace_style"):
        WorldSpec(trace_style="T9")


def test_exploratory_and_unfaithful_traces_are_what_they_claim():
    spec = WORLDS["pair"]
    long = _rows(replace(spec, trace_style="T4"), n=256)
    tries = [r["teacher_response"].count(" not .") for r in long]
    assert set(tries) == {1, 2, 3}  # one to three wrong tries, instance-specific
    for r in long:
        *wrong, last = r["teacher_response"].split(" not . ")
        assert last == [n for n in _rows(spec, n=256) if n["id"] == r["id"]][0]["teacher_response"]
        for w in wrong:  # each wrong try executes its own procedure, which is not the answer's
            assert w.split("-> ")[1].replace(" ", "") != r["answer"]
    eps = 0.3
    native = {r["id"]: r["teacher_response"] for r in _rows(spec, n=256)}
    unf = _rows(replace(spec, trace_style="T5", unfaithful_share=eps), n=256)
    changed = [r for r in unf if r["teacher_response"] != native[r["id"]]]
    assert 0.2 * 256 < len(changed) < 0.4 * 256
    for r in changed:  # a wrong intermediate line, the right final line
        mid, final = r["teacher_response"].split(" : ")[1].split(" -> ")
        n_mid, n_final = native[r["id"]].split(" : ")[1].split(" -> ")
        assert mid != n_mid and sorted(mid.split()) == sorted(n_mid.split()) and final == n_final
    assert all(r["teacher_response"] == native[r["id"]] for r in _rows(replace(spec, trace_style="T5",
                                                                               unfaithful_share=0.0), n=256))


@pytest.mark.parametrize("spec", WORLD_SPECS, ids=IDS)
def test_extractor_gives_every_style_the_same_leak_free_strategy(spec):
    native = {r["id"]: r for r in _rows(spec, "heldout")}
    for style in STYLES:
        for r in _rows(replace(spec, trace_style=style), "heldout"):
            m = spec.rl_method(r["keyword"])
            # the extractor reads only the problem and the trace
            assert extract_strategy(r["problem"], r["teacher_response"], spec) == m.strategy() == r["strategy"]
            assert r["strategy"] == native[r["id"]]["strategy"]
            assert leak_reasons(r["strategy"], r["answer"]) == []
    r = native[next(iter(native))]
    # a trace whose boxed answer no procedure gives has no strategy (trains with the RL term only)
    wrong_answer = re.sub(r"\\boxed\{\d+\}", r"\\boxed{000}", r["teacher_response"])
    assert extract_strategy(r["problem"], wrong_answer, spec) is None
    assert extract_strategy("Apply zap to the tag .", r["teacher_response"], spec) is None


@pytest.mark.parametrize("spec", WORLD_SPECS, ids=IDS)
def test_tokenizer_covers_every_style_and_dial_without_growing(spec):
    """Every style's trace, partial and wrong strategies, and the dials' pre-training examples
    are written in the pieces the world's tokenizer already has: the student, and its cached
    pre-trained model, are the same across the dials (fails if a style needs a new word)."""
    from sgpo.prompts import PromptStyle

    tok = build_tokenizer(spec)
    dialled = replace(spec, strategy_wrong_share=0.3, strategy_partial_share=0.3, partial_shifts=3,
                      partial_pretrain_share=0.5, prior_bias=0.3)
    assert build_tokenizer(dialled).get_vocab() == tok.get_vocab()
    texts = []
    for style in STYLES:
        for r in _rows(replace(dialled, trace_style=style), n=48):
            texts += [r["teacher_response"], r["strategy"]]
    rng = random.Random(1)
    for _ in range(200):
        ex = pretrain_example(dialled, rng)
        texts += [ex.response, PromptStyle().render(tok, ex.problem, ex.strategy)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text, text


def test_wrong_and_partial_strategies_come_in_their_shares():
    spec = replace(WORLDS["pair"], strategy_wrong_share=0.3, strategy_partial_share=0.2, partial_shifts=3)
    rows, plain = _rows(spec, n=256), {r["id"]: r for r in _rows(WORLDS["pair"], n=256)}
    q = [r["strategy_quality"] for r in rows]
    assert 0.2 < q.count("wrong") / 256 < 0.4 and 0.1 < q.count("partial") / 256 < 0.3
    assert all(r["teacher_response"] == plain[r["id"]]["teacher_response"] for r in rows)
    for r in rows:
        m = spec.rl_method(r["keyword"])
        assert leak_reasons(r["strategy"], r["answer"]) == []
        if r["strategy_quality"] == "right":
            assert r["strategy"] == m.strategy()
        elif r["strategy_quality"] == "wrong":
            assert r["strategy"] != m.strategy() and r["strategy"] in {o.strategy() for o in spec.methods}
        else:
            shifts = [int(x) for x in re.findall(r"\d", r["strategy"].split("add")[1].split("to each")[0])]
            assert len(shifts) == 3 and m.shift in shifts and r["strategy"].startswith(
                m.strategy().split(" , then")[0])
    # the same problems get the same quality whatever the style (their own draws)
    styled = _rows(replace(spec, trace_style="T4"), n=256)
    assert [r["strategy"] for r in styled] == [r["strategy"] for r in rows]
    with pytest.raises(ValueError, match="at most 1"):
        replace(spec, strategy_wrong_share=0.7, strategy_partial_share=0.5)


def test_pretraining_dials_enter_the_cache_key_only_when_set():
    base = WorldConfig(tasks=WORLDS["pair"])
    assert {"partial_pretrain_share", "prior_bias"}.isdisjoint(WORLDS["pair"].pretrain_fingerprint())
    for rl_only in ({"trace_style": "T4"}, {"strategy_wrong_share": 0.5}, {"strategy_partial_share": 1.0},
                    {"partial_shifts": 3}, {"unfaithful_share": 0.1}):
        assert WorldConfig(tasks=replace(WORLDS["pair"], **rl_only)).key() == base.key()
    partial = WorldConfig(tasks=replace(WORLDS["pair"], partial_pretrain_share=0.25))
    biased = WorldConfig(tasks=replace(WORLDS["pair"], prior_bias=0.3))
    assert len({base.key(), partial.key(), biased.key()}) == 3
    # a biased prior executes the map, so two maps are two models
    assert WorldConfig(tasks=replace(biased.tasks, map_seed=1)).key() != biased.key()
    assert WorldConfig(tasks=replace(partial.tasks, map_seed=1)).key() == partial.key()


@pytest.mark.parametrize("spec", WORLD_SPECS, ids=IDS)
def test_prior_bias_and_partial_pretraining_examples(spec):
    n = 3000
    rng = random.Random(3)
    biased = [pretrain_example(replace(spec, prior_bias=0.5), rng) for _ in range(n)]
    unguided = [e for e in biased if e.strategy is None]
    on_map = [e for e in unguided if e.method == spec.rl_method(e.problem.split(" to the ")[0][6:]).name]
    chance = 1 / len(spec.methods)
    assert 0.45 < len(on_map) / len(unguided) - chance * 0.5 < 0.6  # bias + (1 - bias) x chance
    rng = random.Random(4)
    part = [pretrain_example(replace(spec, partial_pretrain_share=0.5), rng) for _ in range(n)]
    partial = [e for e in part if e.strategy and " or " in e.strategy]
    guided = [e for e in part if e.strategy]
    assert 0.4 < len(partial) / len(guided) < 0.6
    for e in partial:  # the response executes one of the candidates, in the strategy's order
        m = next(o for o in spec.methods if o.name == e.method)
        assert e.strategy.startswith(f"Method : {m.strategy().split(' : ')[1].split(' , then')[0]}")
        assert str(m.shift) in e.strategy.split("add")[1]
    # off by default: the same rng gives the examples every cached model was trained on (the
    # stream of FORMAT_VERSION 3, before the dials; a deliberate change bumps the version)
    import hashlib

    from sgpo.world.pretrain import FORMAT_VERSION

    rng = random.Random(5)
    stream = repr([pretrain_example(spec, rng) for _ in range(300)])
    pinned = {1: "e68ccafa26495ae8", 2: "0b2124eb9eda8302"}[spec.keyword_parts]
    assert (FORMAT_VERSION, hashlib.sha256(stream.encode()).hexdigest()[:16]) == (3, pinned)
    a, b = random.Random(5), random.Random(5)
    assert [pretrain_example(spec, a) for _ in range(300)] == \
           [pretrain_example(replace(spec, trace_style="T4", strategy_wrong_share=0.2), b) for _ in range(300)]


def test_seeded_world_takes_a_dials_overrides():
    w = seeded_world("pair", 3, tasks={"trace_style": "T2"}, pretrain={"hidden_size": 256, "intermediate_size": 512})
    assert w.tasks.trace_style == "T2" and w.tasks.map_seed == 3 and w.pretrain.seed == 3
    assert w.pretrain.hidden_size == 256 and w.key() != seeded_world("pair", 3).key()
    assert seeded_world("pair", 3, tasks={"trace_style": "T2"}).key() == seeded_world("pair", 3).key()
    with pytest.raises(ValueError, match="unknown"):
        seeded_world("pair", 0, tasks={"trace_styl": "T2"})
    with pytest.raises(ValueError, match="seed"):
        seeded_world("pair", 0, pretrain={"seed": 4})


def test_trace_nll_is_the_per_token_loss_sft_trains_on():
    """Per row, the mean NLL equals the model's own loss on that row alone (so batching and
    padding do not change it); the total is the token-weighted mean of the rows."""
    import torch

    from sgpo.prompts import PromptStyle
    from sgpo.world.capability import trace_nll
    from sgpo.world.pretrain import _batch, build_model, encode_example

    spec = WORLDS["pair"]
    tok = build_tokenizer(spec)
    model = build_model(WorldConfig(tasks=spec, pretrain=PretrainSpec(hidden_size=16, num_layers=1, num_heads=2,
                                                                      intermediate_size=32)), tok)
    rows = _rows(replace(spec, trace_style="T4"), n=3) + _rows(replace(spec, trace_style="T2"), n=3)
    got = trace_nll(model, tok, rows, batch_size=4)
    lens = []
    for r, row_nll in zip(rows, got["per_row"]):
        batch = _batch([encode_example(tok, PromptStyle(), r["problem"], None, r["teacher_response"])],
                       tok.pad_token_id)
        with torch.no_grad():
            assert row_nll == pytest.approx(model(**batch).loss.item(), rel=1e-5)
        lens.append(int((batch["labels"] != -100).sum()))
    assert got["tokens"] == sum(lens)
    assert got["nll_per_token"] == pytest.approx(sum(n * k for n, k in zip(got["per_row"], lens)) / sum(lens))


@pytest.mark.slow
def test_pretrained_world_measures():
    """On the demo's pre-trained world model (built into the cache on first use): the native
    traces are the likeliest, answer-only traces far less so, and given the procedure it
    executes almost every problem while unguided it mostly guesses wrong."""
    from sgpo.models import load_model, load_tokenizer
    from sgpo.world.capability import execution_accuracy, success_rates, trace_nll
    from sgpo.world.pretrain import world_model_path

    path = str(world_model_path(WorldConfig(), progress=False))
    model, tok = load_model(path, dtype="float32"), load_tokenizer(path)
    spec = WorldConfig().tasks
    nll = {s: trace_nll(model, tok, _rows(replace(spec, trace_style=s), "heldout", 32))["nll_per_token"]
           for s in ("T0", "T2", "T4")}
    assert nll["T0"] < nll["T2"] and nll["T0"] < nll["T4"]
    rows = _rows(spec, "heldout", 32)
    assert execution_accuracy(model, tok, rows)["accuracy"] > 0.8
    rates = success_rates(model, tok, rows, samples=2)
    assert rates["p_g"] > 0.7 and rates["p_a"] < 0.4


def test_world_prepare_sets_dials_as_typed_fields(tmp_path):
    from sgpo.io import read_jsonl_tolerant
    from sgpo.world.cli import parse_dials, write_problem_files

    dials = parse_dials(["trace_style=T2", "strategy_wrong_share=0.5", "partial_shifts=3"])
    assert dials == {"trace_style": "T2", "strategy_wrong_share": 0.5, "partial_shifts": 3}
    spec = seeded_world("pair", 0, tasks=dials).tasks
    paths = write_problem_files(str(tmp_path), 0, {"train": 16}, spec)
    rows = read_jsonl_tolerant(paths["train"])
    assert all(r["trace_style"] == "T2" and r["teacher_response"].endswith("}") for r in rows)
    assert {r["strategy_quality"] for r in rows} <= {"right", "wrong"}
    for bad, says in (["trace_style"], "FIELD=VALUE"), (["colour=red"], "FIELD one of"), \
                     (["partial_shifts=two"], "not of type int"), (["keywords=a"], "FIELD one of"):
        with pytest.raises(SystemExit, match=says):
            parse_dials(bad)
