"""The one place that imports TRL internals (pinned ``trl==1.16.0``). If a TRL release moves
one of these, only this file changes."""

from __future__ import annotations

from typing import Any

from trl.models.utils import unwrap_model_for_generation  # noqa: F401  (gathers ZeRO-3/FSDP params)
from trl.trainer.utils import disable_dropout_in_model, maybe_gather_lm_head_ctx  # noqa: F401


def prepare_reference_model(model: Any, accelerator: Any) -> Any:
    """A frozen model prepared for inference beside the policy, as TRL prepares its reference
    models: its own ZeRO-3 engine under DeepSpeed, sharded under FSDP, on the device otherwise."""
    from accelerate.utils import DistributedType
    from trl.models.utils import prepare_deepspeed, prepare_fsdp

    model.eval()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return prepare_deepspeed(model, accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)


def __getattr__(name: str):  # lazy: the vLLM client pulls in optional dependencies
    if name == "VLLMClient":
        from trl.generation.vllm_client import VLLMClient

        return VLLMClient
    raise AttributeError(name)
