"""Test doubles and fixtures in one place, importable by the tests, the benchmarks and
scripts/gpu-check (the library never imports this module):

- :class:`LoopbackChatServer`: a scripted OpenAI-compatible chat server on loopback, for tests,
  the throughput benchmark and offline dry runs of ``sgpo extract``. It is a real HTTP server
  (stdlib ``ThreadingHTTPServer`` in a background thread), so the client's timeouts, retries
  and connection handling are exercised exactly as against vLLM or a hosted API. A ``script``
  function decides each reply: choices, an error status with headers, a delay, or a dropped
  connection. Every request body is recorded.
- :func:`tiny_model`: a tiny random Llama-style model folder with a real tokenizer.
"""


from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from sgpo.models import SMOLLM2, resolve_model_path


@dataclass
class Reply:
    """What the server does with one request."""

    texts: list[str] = field(default_factory=list)  # the choices of a 200 reply
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body instead of a chat completion built from ``texts``
    delay_s: float = 0.0  # wait before answering (longer than the client timeout: a timeout)
    drop: bool = False  # close the connection without sending anything
    prompt_tokens: int = 10
    completion_tokens_each: int = 5


Script = Callable[[dict[str, Any]], Reply]

EXAMPLE_STRATEGY: dict[str, Any] = {
    "problem_type": "counting with constraints",
    "key_insight": "Count the complement, which is easier to enumerate, and subtract it from the total.",
    "plan": ["Count all arrangements without the constraint.", "Count the arrangements that violate it.",
             "Subtract the violating count from the total."],
    "techniques": ["complementary counting"],
    "pitfalls": ["double counting overlapping cases"],
    "check": "Verify the method on a smaller instance by listing every case.",
}


def strategy_reply(**overrides: Any) -> str:
    """A teacher reply holding a valid strategy (fields replaced by ``overrides``)."""
    return json.dumps({**EXAMPLE_STRATEGY, **overrides})


def user_text(body: dict[str, Any]) -> str:
    """The last user message of a chat request (where the problem is)."""
    return next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")


def _completion_body(reply: Reply) -> str:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
               for i, t in enumerate(reply.texts)]
    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens_each * len(choices)}
    return json.dumps({"object": "chat.completion", "choices": choices, "usage": usage})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping must not block shutdown
    request_queue_size = 128  # the default listen backlog of 5 resets bursts of new connections

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out leave broken pipes behind; that is the point of the test


class LoopbackChatServer:
    """``with LoopbackChatServer(script) as server:`` then point a client at ``server.base_url``."""

    def __init__(self, script: Script, latency_s: float = 0.0):
        self.script, self.latency_s = script, latency_s
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> LoopbackChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                reply = server.script(body)
                time.sleep(server.latency_s + reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = (reply.body if reply.body is not None else _completion_body(reply)).encode()
                self.send_response(reply.status)
                for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def tiny_model(path: str | os.PathLike, vocab_from: str | None = None, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random Llama-style model (for tests) with the tokenizer of ``vocab_from``
    (default: SmolLM2) to ``path`` and return it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tok = AutoTokenizer.from_pretrained(resolve_model_path(vocab_from or SMOLLM2))
    cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
               tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
