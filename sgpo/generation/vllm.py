"""vLLM generation for GPU runs, in two modes:

- colocated (``vllm``): an engine inside every training process
  (``distributed_executor_backend="external_launcher"``), weights loaded from the policy
  before each rollout;
- server (``vllm-server``): a separate ``trl vllm-serve`` process; the main training process
  pushes weights over the client's communicator, every process sends its own prompts.

vLLM is an optional dependency (``pip install 'sgpo[vllm]'``) imported lazily. This path needs a
GPU and is not exercised by the CPU test suite."""

from __future__ import annotations

from typing import Any

from typing import Sequence

from sgpo.generation.base import Completion, SamplingConfig, counts


class VLLMGenerator:
    def __init__(self, model: Any, tokenizer: Any, server: bool = False, gpu_memory_utilization: float = 0.3,
                 host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
                 process_index: int = 0, is_main_process: bool = True):
        self.tokenizer, self.server, self.is_main = tokenizer, server, is_main_process
        self.eos_ids = {tokenizer.eos_token_id}
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
        name = model if isinstance(model, str) else model.config._name_or_path
        self.llm = LLM(model=name, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       distributed_executor_backend="external_launcher", seed=process_index,
                       enable_prefix_caching=True, max_num_batched_tokens=4096)

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

    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 n: int | Sequence[int] = 1) -> list[list[Completion]]:  # pragma: no cover
        ns = counts(prompts, n)
        if self.server:  # the server takes one n per request: one request per distinct count
            out: list[list[Completion]] = [[] for _ in prompts]
            for k in sorted(set(ns) - {0}):
                idx = [i for i, c in enumerate(ns) if c == k]
                ids = self.client.generate(prompts=[prompts[i] for i in idx], n=k, temperature=sampling.temperature,
                                           top_p=sampling.top_p, max_tokens=sampling.max_new_tokens)["completion_ids"]
                for r, i in enumerate(idx):
                    out[i] = [self._completion(ids[r * k + j]) for j in range(k)]
            return out
        from vllm import SamplingParams

        params = [SamplingParams(n=k, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_new_tokens, seed=sampling.seed) for k in ns]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Completion(c.text, list(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                 for c in o.outputs] for o in outputs]

    def _completion(self, token_ids: list[int]) -> Completion:
        reason = "stop" if token_ids and token_ids[-1] in self.eos_ids else "length"
        return Completion(self.tokenizer.decode(token_ids, skip_special_tokens=True), list(token_ids), reason)
