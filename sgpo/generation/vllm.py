"""vLLM generation for GPU runs: a colocated engine in the training process (weights synced
from the policy before each rollout) or a separate server started with ``trl vllm-serve``.

vLLM is an optional dependency (``pip install sgpo[vllm]``); this module imports it lazily."""

from __future__ import annotations

from typing import Any

from sgpo.generation.base import Completion, SamplingConfig


class VLLMGenerator:
    def __init__(self, model: Any, tokenizer: Any, server: bool = False, gpu_memory_utilization: float = 0.3,
                 host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None):
        self.tokenizer, self.server = tokenizer, server
        self.eos_ids = {tokenizer.eos_token_id}
        if server:
            from sgpo.compat import VLLMClient

            self.client = VLLMClient(base_url=f"http://{host}:{port}")
            self.client.init_communicator()
        else:
            try:
                from vllm import LLM
            except ImportError as e:  # pragma: no cover - GPU only
                raise RuntimeError("generation backend 'vllm' needs vLLM: pip install 'sgpo[vllm]'") from e
            name = model if isinstance(model, str) else model.config._name_or_path
            self.llm = LLM(model=name, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                           enable_prefix_caching=True)

    def sync_weights(self, model: Any) -> None:
        """Push the policy's current parameters into the engine (call before each rollout)."""
        if self.server:
            for name, param in model.named_parameters():
                self.client.update_named_param(name, param.data)
            self.client.reset_prefix_cache()
        else:  # pragma: no cover - GPU only
            llm_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
            llm_model.load_weights(model.state_dict().items())
            self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        if self.server:
            out = self.client.generate(prompts=prompts, n=n, temperature=sampling.temperature,
                                       top_p=sampling.top_p, max_tokens=sampling.max_new_tokens)
            ids = out["completion_ids"]
            res = []
            for i in range(len(prompts)):
                row = []
                for j in range(n):
                    t = ids[i * n + j]
                    reason = "stop" if t and t[-1] in self.eos_ids else "length"
                    row.append(Completion(self.tokenizer.decode(t, skip_special_tokens=True), list(t), reason))
                res.append(row)
            return res
        from vllm import SamplingParams  # pragma: no cover - GPU only

        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, seed=sampling.seed)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Completion(c.text, list(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                 for c in o.outputs] for o in outputs]
