"""The lean sampler (sgpo.generation.lean) against transformers ``model.generate``: greedy
decoding token for token, the sampled distribution (chi-square against the exact next-token
distributions of a tiny model), the log-probs the trainer computes for the sampled tokens, the
batch plan, and the fallback for models it does not handle."""

import logging

import pytest
import torch

from sgpo.generation import SamplingConfig
from sgpo.generation.hf import HFGenerator
from sgpo.generation.lean import LeanSampler, plan_batches, top_p_filter, unsupported_reason


def _ids(out):
    return [[c.token_ids for c in o] for o in out]


def _llama(vocab: int, seed: int = 0, head_scale: float = 1.0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    cfg.update(kw)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


@pytest.fixture(scope="module")
def world_tok():
    """The strategy world's word-level tokenizer (117 pieces): a vocabulary small enough for
    exact distributions."""
    from sgpo.world.tasks import WorldSpec
    from sgpo.world.tokenizer import build_tokenizer

    return build_tokenizer(WorldSpec())


def test_plan_batches_keeps_rows_within_the_batch_and_lengths_apart():
    lengths = [15] * 8 + [44, 42, 40, 44, 42, 40, 44, 40]  # unguided and guided prompts, as a step of SGPO
    batches = plan_batches(lengths, [4] * 16, batch_size=64)
    assert len(batches) == 1  # all 64 rows decode together ...
    groups = batches[0]  # ... but prefill in two groups: 40-44 tokens, then the 15-token prompts
    assert [sorted({lengths[i] for i in g.prompts}) for g in groups] == [[40, 42, 44], [15]]
    batches = plan_batches([5, 9, 7, 3], [3, 0, 7, 2], batch_size=4)
    rows = {}
    for b in batches:
        assert sum(sum(g.counts) for g in b) <= 4
        for g in b:
            for i, c in zip(g.prompts, g.counts):
                rows[i] = rows.get(i, 0) + c
    assert rows == {0: 3, 2: 7, 3: 2}  # every sample planned once, none of the prompt sampled 0 times


def test_top_p_filter_keeps_the_nucleus_transformers_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    for top_p in (0.1, 0.5, 0.9, 0.99):
        want = TopPLogitsWarper(top_p)(None, logits.clone()).isinf()
        assert torch.equal(top_p_filter(logits, top_p).isinf(), want), top_p


@pytest.mark.slow
def test_greedy_matches_generate_token_for_token(tiny_model_dir):
    """Prompts of different lengths, per-prompt counts (0 included), batches smaller than a
    prompt's group, and extra stop tokens so rows end at different steps and are dropped."""
    from sgpo.generation import encode_prompts
    from sgpo.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype="float32")
    prompts = ["What is 2 + 2?", "Name a prime number larger than ten and explain why it is prime.", "hi",
               "<|im_start|>user\nSolve x + 1 = 3.<|im_end|>\n<|im_start|>assistant\n"]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=16)
    ref = HFGenerator(model, tok, batch_size=3, sampler="generate")
    lean = HFGenerator(model, tok, batch_size=3)
    assert lean.lean is not None
    plain = _ids(ref.generate(prompts, greedy))
    # stop tokens the greedy rows emit at steps 2-5, so rows stop at different times
    stops = {row[0][k] for row, k in zip(plain, (2, 3, 5, 4))}
    model.generation_config.eos_token_id = sorted(stops | {tok.eos_token_id})
    ref, lean = HFGenerator(model, tok, batch_size=3, sampler="generate"), HFGenerator(model, tok, batch_size=3)
    ns = [2, 1, 0, 3]
    want, got = ref.generate(prompts, greedy, n=ns), lean.generate(prompts, greedy, n=ns)
    assert _ids(got) == _ids(want)
    assert [[c.finish_reason for c in o] for o in got] == [[c.finish_reason for c in o] for o in want]
    assert {c.finish_reason for o in got for c in o} == {"stop"}
    assert [[c.text for c in o] for o in got] == [[c.text for c in o] for o in want]
    ids = encode_prompts(tok, prompts)
    assert _ids(lean.generate(ids, greedy, n=ns)) == _ids(want)  # token-id prompts, as the trainer sends


@pytest.mark.slow
def test_greedy_matches_generate_on_smollm2(smollm2_dir):
    """The real 135M model (grouped-query attention, 30 layers) in float32."""
    from sgpo.models import load_model, load_tokenizer

    tok = load_tokenizer(str(smollm2_dir))
    model = load_model(str(smollm2_dir), dtype="float32")
    msgs = [[{"role": "user", "content": q}] for q in ("What is 12 + 30?", "Name three colours.",
                                                       "Compute 7 * 8 and explain each step briefly.")]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=24)
    want = HFGenerator(model, tok, batch_size=4, sampler="generate").generate(prompts, greedy, n=[1, 2, 1])
    got = HFGenerator(model, tok, batch_size=4).generate(prompts, greedy, n=[1, 2, 1])
    assert _ids(got) == _ids(want)


def _chi_square_p(observed: dict, expected: dict, n: int) -> float:
    """P-value of Pearson's chi-square goodness of fit; outcomes expected fewer than 5 times
    are pooled into one cell (the pool is dropped when it expects fewer than 5 too)."""
    cells, pool_obs, pool_exp = [], 0, 0.0
    for key, p in expected.items():
        if n * p >= 5:
            cells.append((observed.get(key, 0), n * p))
        else:
            pool_obs, pool_exp = pool_obs + observed.get(key, 0), pool_exp + n * p
    unexpected = sum(v for k, v in observed.items() if k not in expected)
    assert unexpected == 0, f"{unexpected} samples outside the support"
    if pool_exp >= 5:
        cells.append((pool_obs, pool_exp))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    assert df >= 5, "too few cells for the test to mean anything"
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@torch.no_grad()
def _exact_two_token_distribution(model, prompt: list[int], temperature: float, top_p: float, eos: int) -> dict:
    """P(first two completion tokens) under softmax(top-p(logits / T)), computed from full
    forward passes with transformers' own warpers (independent of either sampler)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    def dist(ids):
        logits = model(torch.tensor([ids])).logits[:, -1].float()
        logits = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits))
        return logits.softmax(-1)[0]

    out = {}
    first = dist(prompt)
    for a in first.nonzero()[:, 0].tolist():
        if a == eos:
            out[(a,)] = float(first[a])
            continue
        second = dist(prompt + [a])
        for b in second.nonzero()[:, 0].tolist():
            out[(a, b)] = float(first[a] * second[b])
    return out


@pytest.mark.slow
def test_sampled_distribution_is_the_models(world_tok):
    """Two tokens from each of two prompts of different lengths, sampled at T = 0.8, top-p 0.9,
    4000 times per prompt by each sampler, against the exact distribution over the 117-token
    vocabulary (a tiny Llama whose LM head is scaled up so that a few dozen outcomes carry the
    mass). Each p-value must exceed 1e-4: a correct sampler fails one of the four with
    probability below 4e-4, while a wrong temperature, top-p or cache position fails all."""
    model = _llama(len(world_tok), seed=3, head_scale=30.0)
    model.generation_config.eos_token_id = world_tok.eos_token_id
    prompts = [world_tok("Apply zap to the tag 648 .")["input_ids"], world_tok("the tag")["input_ids"]]
    sampling = SamplingConfig(temperature=0.8, top_p=0.9, max_new_tokens=2, seed=5)
    n = 4000
    for sampler in ("lean", "generate"):
        gen = HFGenerator(model, world_tok, batch_size=1500, sampler=sampler)
        out = gen.generate(prompts, sampling, n=n)
        for prompt, group in zip(prompts, out):
            expected = _exact_two_token_distribution(model, prompt, 0.8, 0.9, world_tok.eos_token_id)
            assert abs(sum(expected.values()) - 1) < 1e-4
            observed: dict = {}
            for c in group:
                observed[tuple(c.token_ids)] = observed.get(tuple(c.token_ids), 0) + 1
            p = _chi_square_p(observed, expected, n)
            assert p > 1e-4, (sampler, len(prompt), p)


@pytest.mark.slow
def test_chi_square_test_rejects_a_wrong_temperature(world_tok):
    """The distribution test has power: samples at T = 0.9 fail against T = 0.8's distribution."""
    model = _llama(len(world_tok), seed=3, head_scale=30.0)
    model.generation_config.eos_token_id = world_tok.eos_token_id
    prompt = world_tok("Apply zap to the tag 648 .")["input_ids"]
    out = HFGenerator(model, world_tok, batch_size=1500).generate(
        [prompt], SamplingConfig(temperature=0.9, top_p=0.9, max_new_tokens=2, seed=5), n=4000)
    observed: dict = {}
    for c in out[0]:
        observed[tuple(c.token_ids)] = observed.get(tuple(c.token_ids), 0) + 1
    expected = _exact_two_token_distribution(model, prompt, 0.8, 0.9, world_tok.eos_token_id)
    expected_keys = set(expected)
    observed = {k: v for k, v in observed.items() if k in expected_keys}  # T = 0.9 widens the nucleus
    assert _chi_square_p(observed, expected, sum(observed.values())) < 1e-6


@pytest.mark.slow
def test_sampled_tokens_have_the_log_probs_the_trainer_computes(world_tok):
    """The log-prob of every sampled token under the sampler's logits / T equals the one the
    trainer's scoring pass (sgpo.trainer.rollouts.old_logprobs, a right-padded full forward)
    computes for the same ids: the cache, positions and masks decode in the context the losses
    score, with prompts of different lengths and rows that stop early and leave the batch."""
    from sgpo.trainer.rollouts import old_logprobs

    model = _llama(len(world_tok), seed=1, head_scale=4.0)
    eos = {world_tok.eos_token_id, world_tok.convert_tokens_to_ids(" the")}
    sampler = LeanSampler(model, eos, world_tok.pad_token_id)
    prompts = [world_tok(t)["input_ids"] for t in ("Apply zap to the tag 648 .", "the", "Apply cog to 12 and 9 .")]
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=20)
    out = sampler.sample(prompts, [5, 3, 4], sampling, batch_size=7, generator=torch.Generator().manual_seed(0),
                         return_logprobs=True)
    flat = [(prompts[i], ids, lp) for i, group in enumerate(out) for ids, _, lp, _ in group]
    assert len({len(ids) for _, ids, _ in flat}) > 3  # rows of many lengths: some stopped early
    want = old_logprobs(model, [p for p, _, _ in flat], [c for _, c, _ in flat], [None] * len(flat),
                        pad_id=world_tok.pad_token_id, batch_size=16, chunk_size=64, temperature=0.7)
    for (_, _, lp), (ref, _) in zip(flat, want):
        torch.testing.assert_close(lp, ref, atol=2e-5, rtol=0)


def test_models_it_cannot_run_fall_back_to_generate_logged_once(world_tok, caplog, monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sgpo.generation import hf

    monkeypatch.setattr(hf, "_fallbacks_logged", set())

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(world_tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)).eval()
    assert "Qwen2ForCausalLM" in unsupported_reason(qwen)
    assert unsupported_reason(_llama(len(world_tok))) is None
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=4)
    with caplog.at_level(logging.WARNING, logger="sgpo.generation.hf"):
        gens = [HFGenerator(qwen, world_tok) for _ in range(2)]
    assert all(g.lean is None for g in gens)
    assert sum("Qwen2ForCausalLM" in r.getMessage() for r in caplog.records) == 1  # once per process
    ref = HFGenerator(qwen, world_tok, sampler="generate")
    prompts = [world_tok("the tag")["input_ids"]]
    assert _ids(gens[0].generate(prompts, greedy)) == _ids(ref.generate(prompts, greedy))
    with pytest.raises(ValueError, match="sampler"):
        HFGenerator(qwen, world_tok, sampler="fast")


def test_config_names_the_sampler():
    from sgpo.trainer.config import load_config

    assert load_config(None, ["data.path=x"]).system.generation_sampler == "lean"
    with pytest.raises(ValueError, match="generation_sampler"):
        load_config(None, ["data.path=x", "system.generation_sampler=fast"]).validate()


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [5, 0])
def test_kept_targets_are_the_teacher_pass(world_tok, top_k):
    """The targets the sampler keeps for a prompt's completions equal what the teacher pass
    (sgpo.trainer.rollouts.teacher_targets, a full forward over prompt + completion) computes
    from that prompt: top-k ids, their log-probs, the sampled token's log-prob (K = V at 0)."""
    from sgpo.trainer.rollouts import teacher_targets

    model = _llama(len(world_tok), seed=2, head_scale=4.0)
    eos = {world_tok.eos_token_id, world_tok.convert_tokens_to_ids(" the")}
    sampler = LeanSampler(model, eos, world_tok.pad_token_id)
    prompts = [world_tok(t)["input_ids"] for t in ("Apply zap to the tag 648 .", "the", "Apply cog to 12 and 9 .")]
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=12)
    out = sampler.sample(prompts, [3, 2, 3], sampling, batch_size=5, generator=torch.Generator().manual_seed(1),
                         keep_targets=[True, False, True], top_k=top_k)
    assert all(row[3] is None for row in out[1])  # not asked
    rows = [(prompts[i], row) for i in (0, 2) for row in out[i]]
    want = teacher_targets(model, [p for p, _ in rows], [r[0] for _, r in rows], top_k=top_k,
                           pad_id=world_tok.pad_token_id, batch_size=4, chunk_size=16, temperature=0.7)
    for (_, (ids, _, _, (sup, lp, samp))), t in zip(rows, want):
        assert sup.shape == (len(ids), top_k or len(world_tok))
        assert torch.equal(sup, t.support_ids)
        torch.testing.assert_close(lp, t.teacher_logp, atol=2e-5, rtol=0)
        torch.testing.assert_close(samp, t.teacher_logp_sampled, atol=2e-5, rtol=0)


@pytest.mark.slow
def test_sgpo_step_with_kept_targets_skips_the_teacher_pass_and_keeps_the_loss(tiny_model_dir, tmp_path, monkeypatch):
    """One SGPO step (every guided trajectory distilled) with the sampler's targets and one
    with the teacher pass, same seed: the same loss and gradient norm, and the teacher pass
    does not run for the first."""
    from sgpo.data import build_problems
    from sgpo.trainer import methods
    from sgpo.trainer.config import load_config
    from sgpo.trainer.trainer import Trainer

    calls = []
    teacher_targets = methods.teacher_targets
    monkeypatch.setattr(methods, "teacher_targets", lambda *a, **k: calls.append(len(a[1])) or teacher_targets(*a, **k))
    rows = [{"id": str(i), "problem": f"What is {i} + {i}?", "answer": str(2 * i),
             "strategy": "Double the number."} for i in range(4)]
    results = {}
    for kept in (True, False):
        cfg = load_config(None, ["data.path=x", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                                 "algorithm.samples_per_problem=4", "algorithm.group_guided=2",
                                 "algorithm.max_new_tokens=6", "algorithm.weight_mode=constant",
                                 "algorithm.distill_on=all", "algorithm.top_k=8", "training.prompts_per_step=2",
                                 "training.max_steps=1", "run.save_steps=0", "run.save_final_model=false",
                                 "run.progress=false", f"system.sampler_teacher_targets={str(kept).lower()}",
                                 f"run.output_dir={tmp_path / str(kept)}"])
        trainer = Trainer(cfg, problems=build_problems(rows, "t"))
        calls.clear()
        trainer.train_step(type("Bar", (), {"update": lambda *a: None, "set_postfix": lambda *a, **k: None})())
        results[kept] = (trainer.history[-1], list(calls))
    (with_kept, calls_kept), (with_pass, calls_pass) = results[True], results[False]
    assert with_pass["distill/tokens"] > 0 and calls_pass and not calls_kept
    assert with_kept["distill/tokens"] == with_pass["distill/tokens"]
    assert with_kept["loss"] == pytest.approx(with_pass["loss"], abs=1e-6)
    assert with_kept["grad_norm"] == pytest.approx(with_pass["grad_norm"], rel=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_sampler_on_cuda(tiny_model_dir, dtype):
    """On a GPU (SDPA attention, a CUDA generator): float32 greedy decoding equals
    model.generate's token for token; in bfloat16 (where kernels may break near-ties
    differently) the first tokens agree and every completion is well formed."""
    from sgpo.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype=dtype, device="cuda")
    prompts = ["What is 2 + 2?", "Name a prime number larger than ten and explain why it is prime.", "hi"]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=16)
    want = _ids(HFGenerator(model, tok, batch_size=4, sampler="generate").generate(prompts, greedy, n=[2, 1, 3]))
    got = _ids(HFGenerator(model, tok, batch_size=4).generate(prompts, greedy, n=[2, 1, 3]))
    if dtype == "float32":
        assert got == want
    else:
        assert [[r[:2] for r in g] for g in got] == [[r[:2] for r in g] for g in want]
    sampled = HFGenerator(model, tok, batch_size=4).generate(prompts, SamplingConfig(0.8, 0.9, 16, seed=1), n=3)
    assert all(1 <= len(c.token_ids) <= 16 and c.finish_reason in ("stop", "length") for g in sampled for c in g)
