"""The teacher interface the extraction driver depends on: one async call that returns K
candidate replies to a chat and what they cost. Real implementations live in their own
files (:mod:`sgpo.strategies.openai_client` over HTTP, :mod:`sgpo.strategies.hf_client`
for a local transformers model) so the driver is tested against either, and against a
scripted server, without knowing which it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass
class Usage:
    """Cost of one ``complete`` call; ``requests`` counts HTTP attempts, retries included."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests
        self.retries += other.retries


class TeacherReply(NamedTuple):
    texts: list[str]  # K candidate replies
    usage: Usage


class TeacherError(RuntimeError):
    """A call that failed for good: retries exhausted or a status that retrying cannot fix.
    ``usage`` holds what the failed attempts cost."""

    def __init__(self, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.usage = usage or Usage()


class TeacherClient(Protocol):
    async def complete(self, messages: list[dict[str, str]], n: int = 1, *, temperature: float = 0.7,
                       max_tokens: int = 1024) -> TeacherReply:
        """``n`` sampled replies to ``messages``; raises :class:`TeacherError` on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections or models."""
        ...
