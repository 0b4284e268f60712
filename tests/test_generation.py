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
