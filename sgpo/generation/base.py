"""The generation interface: prompts in (already rendered with the chat template),
completions out with their token ids and finish reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # completion tokens only, EOS included when generation stopped on it
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)


class Generator(Protocol):
    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 n: int | Sequence[int] = 1) -> list[list[Completion]]:
        """Return ``n`` completions per prompt (or ``n[i]`` for prompt i): ``out[i][j]`` is the
        j-th sample of prompt i. One call serves groups of different sizes (autonomous and
        guided rollouts) in the same batches."""
        ...


def counts(prompts: list[str], n: int | Sequence[int]) -> list[int]:
    """Samples per prompt from an int or a per-prompt sequence."""
    ns = [n] * len(prompts) if isinstance(n, int) else list(n)
    if len(ns) != len(prompts) or any(k < 0 for k in ns):
        raise ValueError(f"n must be an int or one non-negative count per prompt ({len(prompts)} prompts, got {n})")
    return ns
