"""The one place that imports TRL internals (pinned ``trl==1.16.0``). If a TRL release moves
one of these, only this file changes."""

from __future__ import annotations

from trl.models.utils import unwrap_model_for_generation  # noqa: F401  (gathers ZeRO-3/FSDP params)
from trl.trainer.utils import disable_dropout_in_model, maybe_gather_lm_head_ctx  # noqa: F401


def __getattr__(name: str):  # lazy: the vLLM client pulls in optional dependencies
    if name == "VLLMClient":
        from trl.generation.vllm_client import VLLMClient

        return VLLMClient
    raise AttributeError(name)
