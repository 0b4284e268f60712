"""A teacher that is a local transformers model, for extraction without a server (and for
end-to-end tests with a tiny model).

Generation is blocking and the model is most efficient on batches, so concurrent
``complete`` calls are queued and drained in batches of up to ``batch_size`` prompts per
``HFGenerator.generate`` call, run in a worker thread to keep the event loop responsive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sgpo.generation.base import Completion, Generator, SamplingConfig
from sgpo.prompts import render
from sgpo.strategies.client import TeacherReply, Usage


@dataclass
class _Pending:
    prompt: str
    n: int
    sampling: SamplingConfig
    future: asyncio.Future[TeacherReply]


class HFChatClient:
    """:class:`~sgpo.strategies.client.TeacherClient` over a local model. Build it from a path
    with :meth:`from_pretrained`, or pass any :class:`~sgpo.generation.Generator` and tokenizer."""

    def __init__(self, generator: Generator, tokenizer: Any, batch_size: int = 8):
        self.generator, self.tokenizer, self.batch_size = generator, tokenizer, batch_size
        self._queue: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None

    @classmethod
    def from_pretrained(cls, model_path: str, batch_size: int = 8, device: str | None = None) -> HFChatClient:
        from sgpo.generation import make_generator
        from sgpo.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_path)
        model = load_model(model_path, device=device)
        return cls(make_generator("hf", model, tokenizer, batch_size=batch_size), tokenizer, batch_size)

    async def complete(self, messages: list[dict[str, str]], n: int = 1, *, temperature: float = 0.7,
                       max_tokens: int = 1024) -> TeacherReply:
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_tokens)
        future: asyncio.Future[TeacherReply] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(render(self.tokenizer, messages), n, sampling, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # let callers started in the same tick join this batch
            head = self._queue[0]
            batch = [p for p in self._queue if (p.n, p.sampling) == (head.n, head.sampling)][: self.batch_size]
            taken = {id(p) for p in batch}
            self._queue = [p for p in self._queue if id(p) not in taken]
            live = [p for p in batch if not p.future.done()]  # skip callers cancelled meanwhile
            if not live:
                continue
            try:
                outs = await asyncio.to_thread(self.generator.generate, [p.prompt for p in live], head.sampling,
                                               head.n)
            except Exception as e:  # hand the error to every waiting caller
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, completions in zip(live, outs):
                if not p.future.done():
                    p.future.set_result(self._reply(p.prompt, completions))

    def _reply(self, prompt: str, completions: list[Completion]) -> TeacherReply:
        prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(len(c.token_ids) for c in completions),
                      requests=1)
        return TeacherReply([c.text for c in completions], usage)

    async def aclose(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
