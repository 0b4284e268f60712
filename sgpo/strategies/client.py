"""The teacher interface the extraction driver depends on: one async call that returns K
candidate replies to a chat and what they cost. Real implementations live in their own
files (:mod:`sgpo.strategies.openai_client` over HTTP, :mod:`sgpo.strategies.hf_client`
for a local transformers model) so the driver is tested against either, and against a
scripted server, without knowing which it has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# what an API key, a bearer token or a credential in a URL looks like
_SECRET = re.compile(r"(?i)(\b(?:sk|pk|rk|hf|key|api|ghp|gho|xox[abp])[-_](?=[\w\-]*\d)[\w\-]{6,}"
                     r"|bearer\s+\S+|(?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[=:]\s*[\"']?(?:bearer\s+)?[^\s\"'&,;]+"
                     r"|(?=[A-Za-z0-9+/_\-]*\d)[A-Za-z0-9+/_\-]{32,})")
MAX_ERROR_CHARS = 200


def scrub_error(text: str) -> str:
    """An error message fit for a shared output file: anything that looks like a key or a
    token is replaced by ``[redacted]`` and the text is cut to ``MAX_ERROR_CHARS``. Clients
    keep server bodies out of their errors; this guards what other code raises."""
    return _SECRET.sub("[redacted]", " ".join(text.split()))[:MAX_ERROR_CHARS]


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
