"""The vLLM generator without vLLM: vLLM needs a GPU and is not installed here, so these tests
stand it in with fakes and say what each fake is.

- Server mode talks through TRL's real ``VLLMClient`` over real HTTP on loopback to a stand-in
  for ``vllm serve`` (:class:`FakeVLLMServer`), configured by the command line of
  :func:`sgpo.generation.vllm.server_command`: it reads that command's flags the way vLLM does
  (``--logprobs-mode``, ``--weight-transfer-config``, ``VLLM_SERVER_DEV_MODE``) and answers the
  endpoints TRL's client calls. Only the NCCL weight-transfer group needs CUDA; that one call is
  recorded instead.
- Colocated mode runs against a recording ``vllm`` module (``LLM``, ``SamplingParams``).
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from sgpo.generation import SamplingConfig
from sgpo.generation.vllm import LOGPROBS_MODE, VLLMGenerator, server_command

REPO = Path(__file__).resolve().parents[1]


# -- the extra's range ---------------------------------------------------------------------------------


def test_vllm_extra_is_the_range_trl_supports() -> None:
    """pyproject's ``vllm`` extra is the range TRL 1.16 supports (read from the installed TRL,
    which warns outside it)."""
    import importlib
    import inspect
    import tomllib

    source = inspect.getsource(importlib.import_module("trl.import_utils").is_vllm_available)
    low, high = re.search(r'Version\("([\d.]+)"\) <= _vllm_base_version <= Version\("([\d.]+)"\)', source).groups()
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert (low, high) == ("0.22.0", "0.31.0") and extra == [f"vllm>={low},<={high}"]


# -- server mode: TRL's client, real HTTP, a stand-in for `vllm serve` -----------------------------------


class FakeVLLMServer:
    """Stands in for ``vllm serve`` started with ``env`` and ``argv`` (vLLM cannot run here).
    It reads the flags vLLM reads for what TRL's client needs: ``--logprobs-mode`` (vLLM's
    default raw_logprobs), ``--weight-transfer-config`` (none by default), and
    ``VLLM_SERVER_DEV_MODE=1`` for the development endpoints (/server_info). Completions: token
    ``prompt[-1] + 1 + j`` then EOS 2 for sample j, each token with log-prob -0.5 (NaN for the EOS)."""

    def __init__(self, env: dict[str, str], argv: list[str]):
        assert argv[:2] == ["vllm", "serve"]
        flags = dict(zip(argv[3::2], argv[4::2]))
        self.model = argv[2]
        self.dev_mode = env.get("VLLM_SERVER_DEV_MODE") == "1"
        self.logprobs_mode = flags.get("--logprobs-mode", "raw_logprobs")
        self.weight_transfer = json.loads(flags["--weight-transfer-config"]) if "--weight-transfer-config" in flags \
            else None
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, {}))
                if path == "/health":
                    return self._send(200, {})
                if path == "/v1/models":
                    return self._send(200, {"data": [{"id": server.model}]})
                if path == "/server_info" and server.dev_mode:
                    return self._send(200, {"vllm_config": {"model_config": {"logprobs_mode": server.logprobs_mode},
                                                            "weight_transfer_config": server.weight_transfer}})
                return self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.requests.append((self.path, body))
                if self.path == "/v1/completions":
                    return self._send(200, {"choices": [server.choice(p, j) for p in body["prompt"]
                                                        for j in range(body["n"])]})
                if self.path == "/reset_prefix_cache" and server.dev_mode:
                    return self._send(200, {})
                return self._send(404, {"detail": "Not Found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def choice(prompt: list[int], j: int) -> dict:
        tokens = [prompt[-1] + 1 + j, 2]
        return {"prompt_token_ids": prompt, "token_ids": tokens,
                "logprobs": {"tokens": [f"token_id:{t}" for t in tokens], "token_logprobs": [-0.5, float("nan")],
                             "top_logprobs": [None, None]}}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def trl_client(monkeypatch):
    """TRL's real VLLMClient, told vLLM is installed; the one CUDA-only call (joining the NCCL
    weight-transfer group) records the device it was given."""
    import sgpo.compat
    import trl.generation.vllm_client as vc

    monkeypatch.setattr(vc, "is_vllm_available", lambda *a, **k: True)

    class Client(vc.VLLMClient):
        devices: list = []

        def init_communicator(self, device=0):
            if self.get_server_info()["weight_transfer_config"] is None:  # what TRL checks before NCCL
                raise RuntimeError("no weight-transfer engine")
            Client.devices.append(device)

    Client.devices = []
    monkeypatch.setattr(sgpo.compat, "VLLMClient", Client, raising=False)
    return Client


@pytest.fixture
def serve():
    started = []

    def start(env, argv):
        started.append(FakeVLLMServer(env, argv))
        return started[-1]

    yield start
    for s in started:
        s.close()


def test_server_command_is_the_stock_vllm_serve_with_what_trl_imposes() -> None:
    """The documented command is plain ``vllm serve`` in dev mode with the NCCL weight transfer
    and processed log-probs: the flags TRL's deprecated ``trl vllm-serve`` wrapper adds for its client."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    env, argv = server_command("Qwen/Qwen2.5-7B-Instruct", port=8001)
    assert env == {"VLLM_SERVER_DEV_MODE": "1"} and argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert json.loads(flags["--weight-transfer-config"]) == {"backend": "nccl"} and flags["--port"] == "8001"
    trl = build_command(ScriptArguments(model="m"))
    trl_flags = dict(zip(trl[5::2], trl[6::2]))
    for key in ("--weight-transfer-config", "--logprobs-mode"):
        assert json.loads(flags[key]) == json.loads(trl_flags[key]) if key.startswith("--weight") \
            else flags[key] == trl_flags[key] == LOGPROBS_MODE


def test_server_mode_through_trls_client(tiny_model_dir, trl_client, serve) -> None:
    """Against the stock command line: the main process joins the weight transfer on its own
    device (cuda:3 here, not TRL's default cuda:0), prompts go as token ids with logprobs=0,
    and every completion carries the server's sampled-token log-probs (NaN where it had none)."""
    from sgpo.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    server = serve(*server_command(str(tiny_model_dir)))
    gen = VLLMGenerator(str(tiny_model_dir), tok, server=True, port=server.port, device=torch.device("cuda", 3))
    assert trl_client.devices == [torch.device("cuda", 3)]
    out = gen.generate([[11, 12], [13, 14, 15]], SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=5, seed=4),
                       n=[2, 1])
    assert [[c.token_ids for c in o] for o in out] == [[[13, 2], [14, 2]], [[16, 2]]]
    lp = out[0][0].logprobs
    assert lp[0] == -0.5 and lp[1] != lp[1] and len(lp) == 2  # NaN for the token it could not score
    sent = [body for path, body in server.requests if path == "/v1/completions"]
    assert [(b["prompt"], b["n"]) for b in sent] == [([[13, 14, 15]], 1), ([[11, 12]], 2)]
    assert all(b["logprobs"] == 0 and b["top_p"] == 1.0 and b["seed"] == 4 for b in sent)
    second = VLLMGenerator(str(tiny_model_dir), tok, server=True, port=server.port, is_main_process=False,
                           device=torch.device("cuda", 1))
    assert second.generate([[11]], SamplingConfig(), n=1)[0][0].token_ids == [12, 2]
    assert trl_client.devices == [torch.device("cuda", 3)]  # only the main process joins the transfer


def test_a_server_without_processed_logprobs_or_dev_mode_is_refused(tiny_model_dir, trl_client, serve) -> None:
    """vLLM's default raw log-probs (before temperature) would bias the rollout correction: the
    error names the command line that serves it right. Without dev mode TRL's client says so."""
    from sgpo.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    env, argv = server_command("m")
    raw = serve(env, argv[: argv.index("--logprobs-mode")])
    with pytest.raises(RuntimeError, match="returns --logprobs-mode raw_logprobs, not processed_logprobs.*"
                                           "VLLM_SERVER_DEV_MODE=1 vllm serve .* --logprobs-mode processed_logprobs"):
        VLLMGenerator(str(tiny_model_dir), tok, server=True, port=raw.port, device="cuda:0")
    no_dev = serve({}, argv)
    with pytest.raises(RuntimeError, match="VLLM_SERVER_DEV_MODE=1"):
        VLLMGenerator(str(tiny_model_dir), tok, server=True, port=no_dev.port, device="cuda:0")
    no_transfer = serve(env, argv[: argv.index("--weight-transfer-config")] + ["--logprobs-mode", LOGPROBS_MODE])
    with pytest.raises(RuntimeError, match="no weight-transfer engine"):
        VLLMGenerator(str(tiny_model_dir), tok, server=True, port=no_transfer.port, device="cuda:0")


# -- colocated engine: a recording `vllm` module ---------------------------------------------------------


class RecordingLLM:
    """Stands in for ``vllm.LLM``: records the constructor's arguments and every call in order
    (``sleep``, ``wake_up``, weight loads, ``generate``); completions are two tokens with a
    log-prob each, in vLLM's ``logprobs=0`` form (one {token id: Logprob} per position)."""

    instances: list["RecordingLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        model = SimpleNamespace(load_weights=lambda weights: self.calls.append(("load_weights", len(list(weights)))))
        runner = SimpleNamespace(model=model)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=runner)))
        RecordingLLM.instances.append(self)

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", [p["prompt_token_ids"] for p in prompts], params))
        out = []
        for p, sp in zip(prompts, params):
            last = p["prompt_token_ids"][-1]
            outs = [SimpleNamespace(text="", token_ids=[last + 1, 2], finish_reason="stop",
                                    logprobs=[{last + 1: SimpleNamespace(logprob=-0.25)},
                                              {2: SimpleNamespace(logprob=-1.5)}]) for _ in range(sp.n)]
            out.append(SimpleNamespace(outputs=outs))
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = ModuleType("vllm")
    fake.LLM = RecordingLLM
    fake.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    RecordingLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", fake)
    return RecordingLLM


def test_colocated_engine_returns_the_sampled_tokens_logprobs(tiny_model_dir, fake_vllm) -> None:
    """The engine is asked for processed log-probs (those of the distribution it samples from,
    after temperature and top-p) and logprobs=0; each completion carries them."""
    from sgpo.models import load_tokenizer

    gen = VLLMGenerator(str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)))
    llm = fake_vllm.instances[0]
    assert llm.kwargs["logprobs_mode"] == LOGPROBS_MODE and llm.kwargs["enable_sleep_mode"] is False
    out = gen.generate([[5, 6], [9]], SamplingConfig(temperature=0.6, max_new_tokens=3), n=[1, 2])
    assert [[(c.token_ids, c.logprobs) for c in o] for o in out] == [[([7, 2], [-0.25, -1.5])],
                                                                     [([10, 2], [-0.25, -1.5])] * 2]
    params = llm.calls[-1][2]
    assert all(p.logprobs == 0 and p.temperature == 0.6 for p in params)
    assert ("sleep", 2) not in llm.calls  # no sleep mode unless asked


def test_colocated_sleep_mode_frees_the_engine_between_rollouts(tiny_model_dir, fake_vllm) -> None:
    """``sleep_mode``: asleep (level 2: weights and KV cache freed) after start-up and after every
    rollout; the weights are woken before the policy's are written in, the KV cache before
    sampling; sampling without a weight load first is refused."""
    from sgpo.models import load_model, load_tokenizer

    policy = load_model(str(tiny_model_dir), dtype="float32")
    gen = VLLMGenerator(str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)), sleep_mode=True)
    llm = fake_vllm.instances[0]
    assert llm.kwargs["enable_sleep_mode"] is True and llm.calls == [("sleep", 2)]
    with pytest.raises(RuntimeError, match="call sync_weights"):
        gen.generate([[5]], SamplingConfig(), n=1)
    for _ in range(2):  # two training steps
        gen.sync_weights(policy)
        gen.generate([[5]], SamplingConfig(), n=1)
    n = len(list(policy.named_parameters()))
    step = [("wake_up", ("weights",)), ("load_weights", n), ("reset_prefix_cache",), ("wake_up", ("kv_cache",)),
            "generate", ("sleep", 2)]
    assert [c if c[0] != "generate" else "generate" for c in llm.calls] == [("sleep", 2)] + step + step


def test_colocated_engine_gets_the_token_ids_the_trainer_scores(tiny_model_dir, fake_vllm) -> None:
    """The engine receives token ids, the ones the trainer encodes from the rendered prompt (no
    second BOS from tokenizing text with special tokens), with neutral penalties; prompts with
    n = 0 are not sent."""
    from sgpo.models import load_tokenizer
    from sgpo.prompts import PromptStyle

    tok = load_tokenizer(str(tiny_model_dir))
    rendered = [PromptStyle().render(tok, "What is 2 + 3?"), PromptStyle().render(tok, "What is 7 - 4?")]
    trainer_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in rendered]  # as the trainer encodes them
    gen = VLLMGenerator(str(tiny_model_dir), tok)
    llm = fake_vllm.instances[0]
    out = gen.generate(trainer_ids + [trainer_ids[0]], SamplingConfig(temperature=0.7, max_new_tokens=9, seed=1),
                       n=[2, 1, 0])
    _, prompts, params = llm.calls[-1]
    assert prompts == trainer_ids and [p.n for p in params] == [2, 1] and [len(o) for o in out] == [2, 1, 0]
    assert all(p.repetition_penalty == 1.0 and p.top_k == -1 and p.min_p == 0.0 and p.temperature == 0.7
               and p.max_tokens == 9 for p in params)
    gen.generate(rendered, SamplingConfig(), n=1)
    assert llm.calls[-1][1] == trainer_ids  # rendered text is encoded the trainer's way
