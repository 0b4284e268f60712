"""The strategy world: its task generator, agreement with the project's grader, the
tokenizer's exact round trip, and the committed problem files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgpo.data import load_problems
from sgpo.prompts import PromptStyle
from sgpo.rewards import score
from sgpo.strategies.leaks import leak_reasons
from sgpo.world.tasks import Method, WorldSpec, answer_of, corpus_texts, make_problems, pretrain_example

ROOT = Path(__file__).resolve().parents[1]
SPEC = WorldSpec()


def test_methods_by_hand():
    # digits (6, 3, 5): reverse -> (5, 3, 6), +4 mod 10 -> (9, 7, 0); rotate -> (3, 5, 6), +7 -> (0, 2, 3)
    assert Method("reverse", 4).apply((6, 3, 5)) == (9, 7, 0)
    assert Method("rotate", 7).apply((6, 3, 5)) == (0, 2, 3)
    assert Method("keep", 1).apply((9, 1, 2)) == (0, 2, 3)
    assert Method("reverse", 4, "fig").solution("zap", (6, 3, 5)) == "zap fig reverse add 4 : 5 3 6 -> 9 7 0 . \\boxed{970}"


def test_every_procedure_gives_a_different_answer():
    # distinct digits make the reorders distinct and distinct shifts then keep answers distinct,
    # so guessing the wrong procedure is always graded wrong
    for d in SPEC.all_digits()[::37]:
        answers = [m.apply(d) for m in SPEC.methods]
        assert len(set(answers)) == len(SPEC.methods) == 15


def test_grader_agrees_with_the_generator():
    rows = make_problems(SPEC, 24, seed=3, split="heldout")
    for r in rows:
        assert r["teacher_response"].endswith(f"\\boxed{{{r['answer']}}}")
        assert score(r["teacher_response"], r["answer"]) == 1.0
        digits = tuple(int(c) for c in r["problem"].split()[-2])
        wrong = [m for m in SPEC.methods if m.name != r["method"]]
        assert all(score(m.solution(r["keyword"], digits), r["answer"]) == 0.0 for m in wrong[:4])
        assert leak_reasons(r["strategy"], r["answer"]) == []  # the project's string and symbolic leak filters


def test_keyword_decides_the_procedure_and_splits_are_disjoint():
    rows = {s: make_problems(SPEC, 64, seed=0, split=s) for s in ("train", "heldout", "combos")}
    for recs in rows.values():
        for r in recs:
            assert r["method"] == SPEC.rl_method(r["keyword"]).name
    train_pairs = {(r["keyword"], r["noun"]) for r in rows["train"]}
    assert train_pairs.isdisjoint({(r["keyword"], r["noun"]) for r in rows["combos"]})
    assert {(r["keyword"], r["noun"]) for r in rows["heldout"]} <= set(SPEC.combos("train"))
    digits = {s: {r["problem"].split()[-2] for r in recs} for s, recs in rows.items()}
    assert digits["train"].isdisjoint(digits["heldout"] | digits["combos"])
    # every keyword has its own procedure, and every noun is held out for some keyword
    assert len({SPEC.rl_method(k) for k in SPEC.keywords}) == len(SPEC.keywords)
    assert {SPEC.heldout_noun(k) for k in SPEC.keywords} == set(SPEC.nouns)
    assert make_problems(SPEC, 64, seed=0, split="train") == rows["train"]
    assert make_problems(SPEC, 64, seed=1, split="train") != rows["train"]


def test_pretraining_pairs_surfaces_with_random_procedures():
    import random

    rng = random.Random(0)
    exs = [pretrain_example(SPEC, rng) for _ in range(3000)]
    zap = [e for e in exs if " zap " in e.problem and e.strategy is None]
    # unguided pre-training examples of one keyword use every procedure, none much more than chance
    counts = {m.name: sum(e.method == m.name for e in zap) for m in SPEC.methods}
    assert all(c > 0 for c in counts.values()) and max(counts.values()) < 3 * len(zap) / len(counts)
    assert all(e.strategy is None or e.strategy.startswith(f"Method {e.method.split()[0]} :") for e in exs)


@pytest.fixture(scope="module")
def tok():
    from sgpo.world.tokenizer import build_tokenizer

    return build_tokenizer(SPEC)


def test_tokenizer_round_trip(tok):
    rows = make_problems(SPEC, 8, seed=0, split="combos")
    style = PromptStyle()
    texts = corpus_texts(SPEC) + [style.render(tok, r["problem"], s) for r in rows for s in (None, r["strategy"])]
    texts += [r["teacher_response"] for r in rows]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    assert len(tok) < 128  # a word-level vocabulary of about a hundred pieces
    # a generated response (with EOS) decodes to the text the grader reads
    ids = tok(rows[0]["teacher_response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert score(tok.decode(ids, skip_special_tokens=True), rows[0]["answer"]) == 1.0
    # the guided prompt's fixed sentence is one token: guided prompts stay short
    guided = tok(style.render(tok, rows[0]["problem"], rows[0]["strategy"]), add_special_tokens=False)["input_ids"]
    assert len(guided) < 45


def test_committed_problem_files_match_the_generator():
    from sgpo.world.cli import SIZES

    for split, n in SIZES.items():
        path = ROOT / "data" / "world" / f"{split}.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        assert recs == make_problems(SPEC, n, seed=0, split=split), f"regenerate with `sgpo world prepare` ({path})"
    problems = load_problems(str(ROOT / "data" / "world" / "train.jsonl"), need_teacher_response=True)
    assert problems.without_strategy == 0 and len(problems) == SIZES["train"]


def test_cache_key_follows_what_pretraining_reads():
    from dataclasses import replace

    from sgpo.world.pretrain import PretrainSpec, WorldConfig, seeded_world

    base = WorldConfig()
    assert base.key() == WorldConfig().key()
    assert WorldConfig(pretrain=PretrainSpec(steps=base.pretrain.steps + 1)).key() != base.key()
    assert WorldConfig(tasks=WorldSpec(nouns=("card", "code"))).key() != base.key()
    # the map and the splits are RL-only: a new map must not force a new pre-trained model
    for spec in (WorldSpec(map_seed=1), WorldSpec(heldout_share=0.3, valid_share=0.1),
                 WorldSpec(order_words=("a", "b", "c"))):
        assert WorldConfig(tasks=spec).key() == base.key()
    # world seeds: each its own map and its own pre-training seed (so its own model)
    s0, s1 = seeded_world("pair", 0), seeded_world("pair", 1)
    assert s0.key() != s1.key() and s0.pretrain.seed == 0 and s1.pretrain.seed == 1
    assert [s0.tasks.rl_method(c) for c in s0.tasks.cues] != [s1.tasks.rl_method(c) for c in s1.tasks.cues]
    assert replace(s1, pretrain=s0.pretrain).key() == s0.key()


@pytest.mark.parametrize("spec", [WorldSpec(), WorldSpec(keyword_parts=2)], ids=["single", "pair"])
def test_pretraining_never_reads_the_rl_only_fields(spec):
    """What the key leaves out must not reach pre-training: the same rng gives the same
    examples and the same tokenizer corpus whatever the RL-only fields (fails if, say,
    pre-training starts to use the map)."""
    import random
    from dataclasses import replace

    from sgpo.world.tasks import RL_ONLY_FIELDS

    other = replace(spec, map_seed=7, heldout_share=0.4, valid_share=0.2, trace_style="T4", unfaithful_share=0.9,
                    strategy_wrong_share=0.3, strategy_partial_share=0.3, partial_shifts=3)
    assert set(spec.to_dict()) - set(spec.pretrain_fingerprint()) >= set(RL_ONLY_FIELDS)
    a, b = random.Random(5), random.Random(5)
    assert [pretrain_example(spec, a) for _ in range(200)] == [pretrain_example(other, b) for _ in range(200)]
    assert corpus_texts(spec) == corpus_texts(other)


PAIR = WorldSpec(keyword_parts=2, valid_share=0.1)


def test_two_part_keywords_compose_and_transfer_is_new_combinations():
    # the order word decides the order and the shift word the shift, whatever the pair
    for cue in PAIR.cues:
        o, s = cue.split()
        assert PAIR.rl_method(cue).order == PAIR.rl_method(f"{o} {PAIR.shift_words[0]}").order
        assert PAIR.rl_method(cue).shift == PAIR.rl_method(f"{PAIR.order_words[0]} {s}").shift
    assert len({PAIR.rl_method(c) for c in PAIR.cues}) == 15
    held = PAIR.transfer_pairs()
    # Latin square: each shift word held out exactly once, each order word at least once,
    # and every word still trains with another word
    assert sorted(c.split()[1] for c in held) == sorted(PAIR.shift_words)
    assert {c.split()[0] for c in held} == set(PAIR.order_words)
    train = PAIR.rl_cues()
    assert {c.split()[0] for c in train} == set(PAIR.order_words) and {c.split()[1] for c in train} == set(PAIR.shift_words)
    rows = {s: make_problems(PAIR, 64, seed=0, split=s) for s in PAIR.available_splits()}
    assert {r["keyword"] for r in rows["transfer"]} <= set(held)
    assert all(r["keyword"] in train for s in ("train", "heldout", "combos", "valid") for r in rows[s])
    digits = {s: {r["problem"].split()[-2] for r in recs} for s, recs in rows.items()}
    assert digits["valid"].isdisjoint(digits["train"] | digits["heldout"] | digits["transfer"])
    assert digits["train"].isdisjoint(digits["heldout"] | digits["transfer"])
    for r in rows["transfer"][:8]:
        assert score(r["teacher_response"], r["answer"]) == 1.0 and r["method"] == PAIR.rl_method(r["keyword"]).name
        assert leak_reasons(r["strategy"], r["answer"]) == []
    with pytest.raises(ValueError, match="transfer needs keyword_parts = 2"):
        make_problems(SPEC, 4, seed=0, split="transfer")


def test_pair_world_tokenizer_covers_its_texts():
    from sgpo.world.tokenizer import build_tokenizer

    tok = build_tokenizer(PAIR)
    for split in PAIR.available_splits():
        for r in make_problems(PAIR, 4, seed=1, split=split):
            for text in (r["problem"], r["strategy"], r["teacher_response"]):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in ids and tok.decode(ids) == text


def test_cpu_tiny_config_names_the_world_and_passes_the_model_check():
    # the check that runs before anything loads must accept the alias (it builds on first use),
    # even offline where an unknown name would be looked up in the Hugging Face cache
    from sgpo.models import BUILT_MODELS, check_model_source
    from sgpo.trainer.config import load_config

    cfg = load_config(str(ROOT / "configs" / "cpu-tiny.yaml"))
    assert cfg.model.name_or_path in BUILT_MODELS
    assert (ROOT / cfg.data.path).is_file()
    check_model_source(cfg.model.name_or_path, "model.name_or_path")
