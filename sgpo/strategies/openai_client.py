"""A teacher behind an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint, the
API that vLLM, SGLang and hosted providers all speak.

Extraction sends thousands of requests to servers that rate-limit, restart and drop
connections, so every request has a timeout and is retried with backoff on 429, 408, 5xx,
timeouts, transport errors and unreadable bodies; other 4xx statuses are the caller's
mistake and fail at once. K candidates are asked for with the ``n`` parameter; a server that
ignores or rejects it gets K single requests instead (remembered for later calls).
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import httpx

from sgpo.strategies.client import TeacherError, TeacherReply, Usage
from sgpo.strategies.retry import RetryPolicy, parse_retry_after

_RETRY_STATUSES = {408, 429}


class _NUnsupported(Exception):
    """The server refused a request because of ``n`` > 1."""


def parse_chat_response(data: Any) -> tuple[list[str], int, int]:
    """(texts in choice order, prompt tokens, completion tokens) from a chat completion body."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError("no 'choices' list in the response body")
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    texts = []
    for c in choices:
        message = c.get("message") if isinstance(c, dict) else None
        if not isinstance(message, dict):
            raise ValueError("a choice has no 'message' object")
        texts.append(message.get("content") or "")
    usage = data.get("usage") or {}
    return texts, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


_SAFE_CODE = re.compile(r"[a-z][a-z_]{0,39}")  # invalid_api_key, rate_limit_exceeded: no digits, no key


def status_reason(resp: httpx.Response) -> str:
    """What a failed reply may put into records, which people share: the status, its standard
    reason phrase and the error's machine code (``invalid_api_key``) if the body has one of
    the OpenAI form; never the body's text, which servers fill with the request, key included."""
    text = f"HTTP {resp.status_code} {httpx.codes.get_reason_phrase(resp.status_code)}".rstrip()
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        return text
    code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    if isinstance(code, str) and _SAFE_CODE.fullmatch(code):
        text += f" ({code})"
    return text


class OpenAIChatClient:
    """:class:`~sgpo.strategies.client.TeacherClient` over httpx; at most ``concurrency``
    requests in flight (backoff sleeps do not hold a slot)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                 concurrency: int = 16, retry: RetryPolicy | None = None, extra_body: dict[str, Any] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, seed: int | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout_s,
                                       limits=limits, transport=transport)
        self.model, self.retry, self.extra_body = model, retry or RetryPolicy(), extra_body or {}
        self._slots = asyncio.Semaphore(concurrency)
        self._n_supported: bool | None = None  # learnt from the first n > 1 call
        self._rng = random.Random(seed)

    async def complete(self, messages: list[dict[str, str]], n: int = 1, *, temperature: float = 0.7,
                       max_tokens: int = 1024) -> TeacherReply:
        usage = Usage()
        texts: list[str] = []
        if n > 1 and self._n_supported is not False:
            try:
                texts = await self._request(messages, n, temperature, max_tokens, usage)
                self._n_supported = len(texts) >= n
            except _NUnsupported:
                self._n_supported = False
        if n == 1 or len(texts) < n:
            missing = n - len(texts)
            results = await asyncio.gather(*(self._request(messages, 1, temperature, max_tokens, usage)
                                             for _ in range(missing)), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
                texts += r
        return TeacherReply(texts[:n], usage)

    async def _request(self, messages: list[dict[str, str]], n: int, temperature: float, max_tokens: int,
                       usage: Usage) -> list[str]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                "max_tokens": max_tokens, **self.extra_body}
        if n > 1:
            body["n"] = n
        for attempt in range(self.retry.max_retries + 1):
            retry_after: float | None = None
            async with self._slots:
                usage.requests += 1
                try:
                    resp = await self._http.post("chat/completions", json=body)
                except httpx.TransportError as e:  # timeouts, refused and dropped connections
                    error = type(e).__name__  # its text can hold the URL, and a URL can hold a key
                else:
                    if resp.status_code == 200:
                        try:
                            texts, p_tok, c_tok = parse_chat_response(resp.json())
                        except ValueError as e:  # includes JSONDecodeError
                            error = f"unreadable response body: {e}"
                        else:
                            usage.prompt_tokens += p_tok
                            usage.completion_tokens += c_tok
                            return texts
                    elif resp.status_code in _RETRY_STATUSES or resp.status_code >= 500:
                        error = status_reason(resp)
                        retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    elif n > 1 and resp.status_code in (400, 422):
                        raise _NUnsupported()
                    else:  # the body can echo the request, API key included: status and reason only
                        raise TeacherError(status_reason(resp), usage)
            if attempt == self.retry.max_retries:
                raise TeacherError(f"gave up after {attempt + 1} attempts, last error: {error}", usage)
            usage.retries += 1
            await asyncio.sleep(self.retry.delay(attempt, retry_after, self._rng))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()
