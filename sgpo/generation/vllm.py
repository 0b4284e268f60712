"""vLLM generation for GPU runs, in two modes:

- colocated (``vllm``): an engine inside every training process
  (``distributed_executor_backend="external_launcher"``), weights loaded from the policy
  before each rollout;
- server (``vllm-server``): a separate ``trl vllm-serve`` process; the main training process
  pushes weights over the client's communicator, every process sends its own prompts.

Prompts reach vLLM as token ids (:func:`sgpo.generation.base.encode_prompts`), never as text:
vLLM would tokenize text with special tokens and put a second BOS before a chat template's own,
so rollouts would condition on other ids than the ones the trainer scores. Sampling takes the
run's settings only: explicit neutral penalties, and the colocated engine ignores the model's
generation_config defaults (``generation_config="vllm"``; its stop tokens still apply).

vLLM is an optional dependency (``pip install 'sgpo[vllm]'``) imported lazily. The engine needs a
GPU: the CPU suite checks what is sent to it with a recording fake (tests/test_generation.py),
tests marked ``gpu`` run the real one (``bash scripts/gpu-check``)."""

from __future__ import annotations

from typing import Any, Sequence

from sgpo.generation.base import Completion, Prompt, SamplingConfig, counts, encode_prompts


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
    def __init__(self, model: Any, tokenizer: Any, server: bool = False, gpu_memory_utilization: float = 0.3,
                 host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
                 process_index: int = 0, is_main_process: bool = True):
        self.tokenizer, self.server, self.is_main = tokenizer, server, is_main_process
        name = model if isinstance(model, str) else model.config._name_or_path
        self.eos_ids = _stop_ids(name, tokenizer)
        if server:
            from sgpo.compat import VLLMClient

            self.client = VLLMClient(base_url=f"http://{host}:{port}")
            if is_main_process:
                self.client.init_communicator()
            return
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - GPU only
            raise RuntimeError("generation backend 'vllm' needs vLLM: pip install 'sgpo[vllm]'") from e
        self.llm = LLM(model=name, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       distributed_executor_backend="external_launcher", seed=process_index,
                       enable_prefix_caching=True, max_num_batched_tokens=4096, generation_config="vllm")

    def sync_weights(self, model: Any) -> None:  # pragma: no cover - GPU only
        """Load the policy's current parameters into the engine (call before each rollout;
        under ZeRO-3 call it while the parameters are gathered)."""
        if self.server:
            if self.is_main:
                self.client.update_model_params(model)
                self.client.reset_prefix_cache()
            return
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights((name, p.data) for name, p in model.named_parameters())
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
                                           max_tokens=sampling.max_new_tokens, generation_kwargs=extra)
                for r, i in enumerate(idx):
                    out[i] = [self._completion(got["completion_ids"][r * k + j]) for j in range(k)]
            return out
        from vllm import SamplingParams

        todo = [i for i, k in enumerate(ns) if k > 0]
        params = [SamplingParams(n=ns[i], temperature=sampling.temperature, top_p=sampling.top_p, top_k=-1,
                                 min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                 max_tokens=sampling.max_new_tokens, seed=sampling.seed) for i in todo]
        outputs = self.llm.generate([{"prompt_token_ids": ids[i]} for i in todo], params, use_tqdm=False)
        out = [[] for _ in prompts]
        for i, o in zip(todo, outputs):
            out[i] = [Completion(self.tokenizer.decode(c.token_ids, skip_special_tokens=True), list(c.token_ids),
                                 "length" if c.finish_reason == "length" else "stop") for c in o.outputs]
        return out

    def _completion(self, token_ids: list[int]) -> Completion:
        reason = "stop" if token_ids and token_ids[-1] in self.eos_ids else "length"
        return Completion(self.tokenizer.decode(token_ids, skip_special_tokens=True), list(token_ids), reason)
