"""The transformers generator: per-prompt sample counts, EOS cutting, seeded determinism."""

import pytest

from sgpo.generation import SamplingConfig
from sgpo.generation.base import counts
from sgpo.generation.hf import HFGenerator, split_completion


def test_split_completion_cuts_after_first_eos():
    assert split_completion([5, 6, 2, 0, 0], {2}) == ([5, 6, 2], "stop")
    assert split_completion([5, 6, 7], {2}) == ([5, 6, 7], "length")
    assert split_completion([], {2}) == ([], "length")


def test_counts_validates():
    assert counts(["a", "b"], 3) == [3, 3] and counts(["a", "b"], [1, 4]) == [1, 4]
    with pytest.raises(ValueError):
        counts(["a", "b"], [1])


@pytest.mark.slow
def test_per_prompt_counts_and_seeded_determinism(tiny_model_dir):
    from sgpo.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))
    gen = HFGenerator(model, tok, batch_size=3)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=5, seed=7)
    out = gen.generate(["one", "two longer prompt", "three"], sampling, n=[2, 0, 3])
    assert [len(o) for o in out] == [2, 0, 3]
    assert all(len(c.token_ids) <= 5 and c.finish_reason in ("stop", "length") for o in out for c in o)
    again = gen.generate(["one", "two longer prompt", "three"], sampling, n=[2, 0, 3])
    assert [[c.token_ids for c in o] for o in out] == [[c.token_ids for c in o] for o in again]


def _greedy_and_sampled(gen, prompts):
    greedy = gen.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=12))
    sampled = gen.generate(prompts, SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=3), n=2)
    return [[c.token_ids for c in o] for o in greedy + sampled]


@pytest.mark.slow
def test_model_generation_config_does_not_reshape_sampling(tiny_model_dir):
    """A model whose generation_config penalises repetition (Qwen2.5-Instruct ships
    repetition_penalty 1.05) samples and greedy-decodes exactly as the same weights without
    it: rollouts come from the distribution the losses score. Covers `sgpo eval` too, which
    samples through the same HFGenerator."""
    from sgpo.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    plain = load_model(str(tiny_model_dir), dtype="float32")
    penalised = load_model(str(tiny_model_dir), dtype="float32")
    penalised.generation_config.update(repetition_penalty=1.8, no_repeat_ngram_size=1, top_k=5, min_new_tokens=12,
                                       suppress_tokens=[tok.eos_token_id])
    prompts = ["What is 2 + 2?", "Name a prime number larger than ten and explain."]
    assert _greedy_and_sampled(HFGenerator(penalised, tok), prompts) == _greedy_and_sampled(HFGenerator(plain, tok), prompts)
    assert penalised.generation_config.repetition_penalty == 1.8  # the model's own config is left as it was


@pytest.mark.slow
def test_token_id_prompts_sample_like_their_text(tiny_model_dir):
    from sgpo.generation import encode_prompts
    from sgpo.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    gen = HFGenerator(load_model(str(tiny_model_dir), dtype="float32"), tok, batch_size=2)
    texts = ["<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n", "short"]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=11)
    from_text = gen.generate(texts, sampling, n=2)
    from_ids = gen.generate(encode_prompts(tok, texts), sampling, n=2)
    assert [[c.token_ids for c in o] for o in from_text] == [[c.token_ids for c in o] for o in from_ids]
