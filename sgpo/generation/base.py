"""The generation interface: prompts in (already rendered with the chat template),
completions out with their token ids and finish reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    def generate(self, prompts: list[str], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        """Return ``n`` completions per prompt: ``out[i][j]`` is the j-th sample of prompt i."""
        ...
