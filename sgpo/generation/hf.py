"""The HF backend: batched sampling from an in-memory transformers model, the CPU path and a
simple GPU path when vLLM is not installed. Two samplers (``sampler``, the training config's
``system.generation_sampler``):

- ``lean`` (default): sgpo's own KV-cached loop (:mod:`sgpo.generation.lean`) for the models it
  handles, one prefill per distinct prompt; other models go through ``generate``, logged once.
- ``generate``: transformers ``model.generate``, the reference path. Prompts are left-padded and
  sent ``batch_size`` sequences at a time.

Sampling uses a GenerationConfig built from the run's :class:`SamplingConfig` alone. A
model's own ``generation_config`` (Qwen2.5-Instruct ships ``repetition_penalty: 1.05``) fills
every field a passed config leaves unset, so it is swapped out for the call: otherwise
rollouts would come from a penalised distribution while every log-prob the losses use is raw.
Only its stop tokens are kept (they end completions; they do not reshape the distribution)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from sgpo.generation.base import Completion, Prompt, SamplingConfig, counts, encode_prompts

SAMPLERS = ("lean", "generate")
log = logging.getLogger(__name__)
_fallbacks_logged: set[str] = set()


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


def generation_config(sampling: SamplingConfig, eos_ids: set[int], pad_id: int | None) -> Any:
    """The run's sampling settings and nothing else: every logits processor transformers would
    otherwise add from defaults is set to its neutral value."""
    from transformers import GenerationConfig

    kw: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=sorted(eos_ids),
                              pad_token_id=pad_id, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                              encoder_no_repeat_ngram_size=0, length_penalty=1.0, typical_p=1.0, min_length=0,
                              renormalize_logits=False)
    if sampling.temperature > 0:
        kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:
        kw.update(do_sample=False)
    return GenerationConfig(**kw)


@contextmanager
def only_config(model: Any, config: Any) -> Iterator[None]:
    """Make ``config`` the model's generation_config for the call (it is where transformers
    fills unset fields from)."""
    original = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = original


def lean_sampler_for(model: Any, eos_ids: set[int], pad_id: int) -> Any:
    """The lean sampler for ``model``, or None (logged once per reason) when it cannot run it."""
    from sgpo.generation.lean import LeanSampler, unsupported_reason

    reason = unsupported_reason(model)
    if reason is None:
        return LeanSampler(model, eos_ids, pad_id)
    if reason not in _fallbacks_logged:
        _fallbacks_logged.add(reason)
        log.warning("lean sampler: %s; sampling with model.generate instead", reason)
    return None


class HFGenerator:
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, show_progress: bool = False,
                 sampler: str = "lean"):
        """``batch_size``: sequences (prompt x sample rows) decoded together. ``sampler``: lean | generate."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} (expected {' or '.join(SAMPLERS)})")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.show_progress = show_progress
        self.eos_ids = _eos_ids(model, tokenizer)
        self.lean = lean_sampler_for(model, self.eos_ids, tokenizer.pad_token_id) if sampler == "lean" else None
        # the lean sampler fills Completion.context_targets of the prompts generate(keep_targets=) names
        self.keeps_context_targets = self.lean is not None

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig, n: int | Sequence[int] = 1,
                 keep_targets: Sequence[bool] | None = None, top_k: int = 0) -> list[list[Completion]]:
        """``keep_targets[i]``: keep the top-``top_k`` targets of prompt i's completions in their
        sampling context (lean sampler only, see :mod:`sgpo.generation.lean`; ignored otherwise)."""
        tok = self.tokenizer
        ns = counts(prompts, n)
        ids = encode_prompts(tok, prompts)
        if self.lean is not None:
            return self._generate_lean(ids, ns, sampling, keep_targets, top_k)
        flat = [ids[i] for i, k in enumerate(ns) for _ in range(k)]
        # longest prompts first keeps padding low inside each batch
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k]))
        results: list[Completion | None] = [None] * len(flat)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        device = next(self.model.parameters()).device
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        iterator: Any = batches
        if self.show_progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="generate", unit="batch")
        config = generation_config(sampling, self.eos_ids, tok.pad_token_id)
        was_training = self.model.training
        self.model.eval()
        try:
            with only_config(self.model, config):
                for idx in iterator:
                    input_ids, mask = _left_pad([flat[k] for k in idx], tok.pad_token_id, device)
                    out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
                    gen = out[:, input_ids.shape[1]:].tolist()
                    for k, row in zip(idx, gen):
                        cut, reason = split_completion(row, self.eos_ids)
                        results[k] = Completion(text=tok.decode(cut, skip_special_tokens=True), token_ids=cut,
                                                finish_reason=reason)
        finally:
            self.model.train(was_training)
        out: list[list[Completion]] = []
        start = 0
        for k in ns:
            out.append(results[start:start + k])  # type: ignore[arg-type]
            start += k
        return out


    def _generate_lean(self, ids: list[list[int]], ns: list[int], sampling: SamplingConfig,
                       keep_targets: Sequence[bool] | None, top_k: int) -> list[list[Completion]]:
        device = next(self.model.parameters()).device
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=device).manual_seed(sampling.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            rows = self.lean.sample(ids, ns, sampling, self.batch_size, generator, keep_targets=keep_targets,
                                    top_k=top_k)
        finally:
            self.model.train(was_training)
        decode = self.tokenizer.decode
        return [[Completion(text=decode(t, skip_special_tokens=True), token_ids=t, finish_reason=r, context_targets=c)
                 for t, r, _, c in group] for group in rows]


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, L] ids and attention mask, padded on the left (generation appends on the right)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)
