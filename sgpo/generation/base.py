"""The generation interface: prompts in, completions out with their token ids and finish reason.

A prompt is the token ids the trainer scores (preferred), or text already rendered with the
chat template, which every engine encodes the one way the trainer does: without adding
special tokens, since the template wrote them (a tokenizer that adds BOS would put a second
one in front of Llama-3's ``<|begin_of_text|>``). So generation conditions on exactly the
ids the old, teacher and current log-probs are computed after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, Union

Prompt = Union[str, Sequence[int]]  # rendered text or token ids


@dataclass(frozen=True)
class SamplingConfig:
    """Everything that shapes the sampling distribution: engines apply nothing else (no
    repetition penalty or other default from a model's generation_config)."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # completion tokens only, EOS included when generation stopped on it
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)
    # [T] the engine's log-prob of each sampled token under the distribution it sampled from
    # (vLLM: after temperature and top-p); None where the engine reports none (hf)
    logprobs: list[float] | None = None
    # (support ids [T, K], their log-probs [T, K], the sampled token's log-prob [T]) under
    # softmax(logits / T) of the context the completion was sampled in, before top-p: what the
    # teacher pass would compute there. Kept by the lean sampler when asked (keep_targets)
    context_targets: tuple[Any, Any, Any] | None = None


class Generator(Protocol):
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 n: int | Sequence[int] = 1) -> list[list[Completion]]:
        """Return ``n`` completions per prompt (or ``n[i]`` for prompt i): ``out[i][j]`` is the
        j-th sample of prompt i. One call serves groups of different sizes (autonomous and
        guided rollouts) in the same batches."""
        ...


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt: ids pass through, rendered text is encoded without adding
    special tokens (the chat template already wrote them)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]


def counts(prompts: Sequence[Any], n: int | Sequence[int]) -> list[int]:
    """Samples per prompt from an int or a per-prompt sequence."""
    ns = [n] * len(prompts) if isinstance(n, int) else list(n)
    if len(ns) != len(prompts) or any(k < 0 for k in ns):
        raise ValueError(f"n must be an int or one non-negative count per prompt ({len(prompts)} prompts, got {n})")
    return ns
