"""Batched sampling with transformers ``model.generate``: the CPU path, and a simple GPU
path when vLLM is not installed. Prompts are left-padded and sent ``batch_size`` sequences
at a time."""

from __future__ import annotations

from typing import Any

import torch

from typing import Sequence

from sgpo.generation.base import Completion, SamplingConfig, counts


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def split_completion(ids: list[int], eos_ids: set[int]) -> tuple[list[int], str]:
    """Cut a generated row after its first EOS (what follows is padding)."""
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[: i + 1], "stop"
    return ids, "length"


class HFGenerator:
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, show_progress: bool = False):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.show_progress = show_progress
        self.eos_ids = _eos_ids(model, tokenizer)

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 n: int | Sequence[int] = 1) -> list[list[Completion]]:
        tok = self.tokenizer
        ns = counts(prompts, n)
        flat = [(i, p) for i, (p, k) in enumerate(zip(prompts, ns)) for _ in range(k)]
        # longest prompts first keeps padding low inside each batch
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k][1]))
        results: list[Completion | None] = [None] * len(flat)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        pad_side, tok.padding_side = tok.padding_side, "left"
        device = next(self.model.parameters()).device
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        iterator: Any = batches
        if self.show_progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="generate", unit="batch")
        was_training = self.model.training
        self.model.eval()
        try:
            for idx in iterator:
                enc = tok([flat[k][1] for k in idx], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                                              eos_token_id=sorted(self.eos_ids))
                if sampling.temperature > 0:
                    kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
                else:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                out = self.model.generate(**enc, **kwargs)
                gen = out[:, enc["input_ids"].shape[1]:].tolist()
                for k, row in zip(idx, gen):
                    ids, reason = split_completion(row, self.eos_ids)
                    text = tok.decode(ids, skip_special_tokens=True)
                    results[k] = Completion(text=text, token_ids=ids, finish_reason=reason)
        finally:
            tok.padding_side = pad_side
            self.model.train(was_training)
        out: list[list[Completion]] = []
        start = 0
        for k in ns:
            out.append(results[start:start + k])  # type: ignore[arg-type]
            start += k
        return out
