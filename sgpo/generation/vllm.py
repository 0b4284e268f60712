"""vLLM generation for GPU runs, in two modes:

- colocated (``vllm``): an engine inside every training process
  (``distributed_executor_backend="external_launcher"``), weights loaded from the policy
  before each rollout; with sleep mode (``system.vllm_sleep_mode``) the engine frees its weights
  and KV cache while the policy trains, which is how a 7B policy and its engine share one GPU;
- server (``vllm-server``): vLLM's own server, started with the stock command line
  (:func:`server_command`)::

      VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --weight-transfer-config '{"backend": "nccl"}' \\
          --logprobs-mode processed_logprobs

  The main training process joins the server's NCCL weight-transfer group on its own device and
  pushes weights before each rollout; every process sends its own prompts. Dev mode serves the
  weight-transfer and prefix-cache endpoints TRL's client uses; ``--logprobs-mode
  processed_logprobs`` makes the returned log-probs those of the distribution actually sampled
  (after temperature and top-p), which the rollout correction needs (checked at start-up).
  ``trl vllm-serve`` is a deprecated wrapper around the same command.

Prompts reach vLLM as token ids (:func:`sgpo.generation.base.encode_prompts`), never as text:
vLLM would tokenize text with special tokens and put a second BOS before a chat template's own,
so rollouts would condition on other ids than the ones the trainer scores. Sampling takes the
run's settings only: explicit neutral penalties, and the colocated engine ignores the model's
generation_config defaults (``generation_config="vllm"``; its stop tokens still apply). Every
completion carries the engine's log-prob of each sampled token (``Completion.logprobs``), the
rollout side of the importance-sampling correction (:mod:`sgpo.core.rollout_correction`).

vLLM is an optional dependency (``pip install 'sgpo[vllm]'``, the range TRL 1.16 supports)
imported lazily. The engine needs a GPU: the CPU suite checks what is sent to it with recording
fakes (tests/test_vllm.py), tests marked ``gpu`` run the real one (``bash scripts/gpu-check``)."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from sgpo.generation.base import Completion, Prompt, SamplingConfig, counts, encode_prompts

LOGPROBS_MODE = "processed_logprobs"  # log-probs of the sampling distribution (after temperature, top-p)


def server_command(model: str, host: str = "127.0.0.1", port: int = 8000) -> tuple[dict[str, str], list[str]]:
    """The environment and command line of the vLLM server ``vllm-server`` talks to: the stock
    ``vllm serve`` with the NCCL weight-transfer engine and processed log-probs (add your own
    flags, e.g. ``--tensor-parallel-size``, after these)."""
    env = {"VLLM_SERVER_DEV_MODE": "1"}  # serves /server_info, the weight-transfer and prefix-cache endpoints
    argv = ["vllm", "serve", model, "--host", host, "--port", str(port),
            "--weight-transfer-config", json.dumps({"backend": "nccl"}), "--logprobs-mode", LOGPROBS_MODE]
    return env, argv


def server_command_line(model: str, host: str = "127.0.0.1", port: int = 8000) -> str:
    import shlex

    env, argv = server_command(model, host, port)
    return " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(argv)


def _stop_ids(name: str, tokenizer: Any) -> set[int]:
    """EOS ids: the tokenizer's and the model's generation_config's (vLLM stops on both)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(name).eos_token_id
    except (OSError, ValueError):
        eos = None
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


class VLLMGenerator:
    reports_logprobs = True  # every Completion carries the engine's sampled-token log-probs

    def __init__(self, model: Any, tokenizer: Any, server: bool = False, gpu_memory_utilization: float = 0.3,
                 host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
                 process_index: int = 0, is_main_process: bool = True, device: Any = None,
                 sleep_mode: bool = False):
        """``device``: this process's device (server mode: the main process joins the weight
        transfer on it; default the current CUDA device). ``sleep_mode`` (colocated): the engine
        sleeps (weights and KV cache freed) outside :meth:`sync_weights` and :meth:`generate`."""
        self.tokenizer, self.server, self.is_main = tokenizer, server, is_main_process
        name = model if isinstance(model, str) else model.config._name_or_path
        self.eos_ids = _stop_ids(name, tokenizer)
        self.sleep_mode, self.weights_asleep = sleep_mode and not server, False
        if server:
            from sgpo.compat import VLLMClient

            self.client = VLLMClient(base_url=f"http://{host}:{port}")
            self._check_server(name, host, port)
            if is_main_process:
                self.client.init_communicator(device=_cuda_device(device))
            return
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - GPU only
            raise RuntimeError("generation backend 'vllm' needs vLLM: pip install 'sgpo[vllm]'") from e
        self.llm = LLM(model=name, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       distributed_executor_backend="external_launcher", seed=process_index,
                       enable_prefix_caching=True, max_num_batched_tokens=4096, generation_config="vllm",
                       logprobs_mode=LOGPROBS_MODE, enable_sleep_mode=self.sleep_mode)
        if self.sleep_mode:  # level 2 frees the weights too: the first sync_weights loads them
            self.llm.sleep(level=2)
            self.weights_asleep = True

    def _check_server(self, name: str, host: str, port: int) -> None:
        """A server without processed log-probs would bias the rollout correction: stop, naming
        the command line that serves it right."""
        mode = self.client.get_server_info().get("model_config", {}).get("logprobs_mode")
        if mode != LOGPROBS_MODE:
            raise RuntimeError(f"the vLLM server at {host}:{port} returns --logprobs-mode {mode}, not {LOGPROBS_MODE} "
                               f"(the sampled distribution's log-probs, which the rollout correction compares with the "
                               f"trainer's); restart it as: {server_command_line(name, host, port)}")

    def sync_weights(self, model: Any) -> None:
        """Load the policy's current parameters into the engine (call before each rollout;
        under ZeRO-3 call it while the parameters are gathered); a LoRA policy's weights go
        merged (:func:`sgpo.lora.export_weights`), under the base model's names."""
        from sgpo.lora import export_weights  # a LoRA policy sends its weights with the adapter merged in

        if self.server:
            if self.is_main:  # names, dtypes and shapes first (the base's), then the tensors, streamed
                meta = [(n, str(w.dtype).removeprefix("torch."), list(w.shape)) for n, w in export_weights(model, False)]
                self.client.update_named_params(meta, export_weights(model))
                self.client.reset_prefix_cache()
            return
        if self.sleep_mode:  # map the engine's weight memory again before writing into it
            import torch

            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
            self.weights_asleep = False
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights(export_weights(model))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 n: int | Sequence[int] = 1) -> list[list[Completion]]:
        ns = counts(prompts, n)
        ids = encode_prompts(self.tokenizer, prompts)
        if self.server:  # the server takes one n per request: one request per distinct count
            out: list[list[Completion]] = [[] for _ in prompts]
            extra = {"seed": sampling.seed} if sampling.seed is not None else None
            for k in sorted(set(ns) - {0}):
                idx = [i for i, c in enumerate(ns) if c == k]
                got = self.client.generate(prompts=[ids[i] for i in idx], n=k, temperature=sampling.temperature,
                                           top_p=sampling.top_p, top_k=0, min_p=0.0, repetition_penalty=1.0,
                                           max_tokens=sampling.max_new_tokens, logprobs=0, generation_kwargs=extra)
                for r, i in enumerate(idx):
                    out[i] = [self._completion(got["completion_ids"][r * k + j], _server_logprobs(got, r * k + j))
                              for j in range(k)]
            return out
        return self._generate_colocated(ids, ns, sampling)

    def _generate_colocated(self, ids: list[list[int]], ns: list[int], sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams

        if self.weights_asleep:
            raise RuntimeError("the vLLM engine sleeps without its weights (system.vllm_sleep_mode): "
                               "call sync_weights(model) before generate")
        todo = [i for i, k in enumerate(ns) if k > 0]
        params = [SamplingParams(n=ns[i], temperature=sampling.temperature, top_p=sampling.top_p, top_k=-1,
                                 min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                 max_tokens=sampling.max_new_tokens, seed=sampling.seed, logprobs=0) for i in todo]
        if self.sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        outputs = self.llm.generate([{"prompt_token_ids": ids[i]} for i in todo], params, use_tqdm=False)
        if self.sleep_mode:  # weights and KV cache freed for the update; the next sync_weights reloads them
            self.llm.sleep(level=2)
            self.weights_asleep = True
        out: list[list[Completion]] = [[] for _ in ns]
        for i, o in zip(todo, outputs):
            out[i] = [Completion(self.tokenizer.decode(c.token_ids, skip_special_tokens=True), list(c.token_ids),
                                 "length" if c.finish_reason == "length" else "stop", _sampled_logprobs(c))
                      for c in o.outputs]
        return out

    def _completion(self, token_ids: list[int], logprobs: list[float] | None) -> Completion:
        reason = "stop" if token_ids and token_ids[-1] in self.eos_ids else "length"
        return Completion(self.tokenizer.decode(token_ids, skip_special_tokens=True), list(token_ids), reason, logprobs)


def _cuda_device(device: Any) -> Any:
    """The device the main process joins the weight transfer on: its own (TRL's client defaults
    to cuda:0, the wrong GPU for a process that is not on it)."""
    if device is not None:
        return device
    import torch

    return torch.device("cuda", torch.cuda.current_device())


def _sampled_logprobs(output: Any) -> list[float] | None:
    """[T] log-prob of each sampled token from a colocated engine's CompletionOutput
    (``logprobs=0``: one {token id: Logprob} per position, the sampled token's)."""
    if output.logprobs is None:
        return None
    return [float(pos[tok].logprob) for pos, tok in zip(output.logprobs, output.token_ids)]


def _server_logprobs(got: dict[str, Any], row: int) -> list[float] | None:
    """[T] sampled-token log-probs of one choice from TRL's client ([T][1] per choice; None = NaN)."""
    if got.get("logprobs") is None:
        return None
    return [math.nan if top[0] is None else float(top[0]) for top in got["logprobs"][row]]
