"""Generation engines behind one small interface: transformers ``generate`` (CPU and small
GPU runs) and vLLM (colocated or a server). Training and evaluation both use it."""

from sgpo.generation.base import Completion, Generator, Prompt, SamplingConfig, encode_prompts

__all__ = ["Completion", "Generator", "Prompt", "SamplingConfig", "encode_prompts", "make_generator"]


def make_generator(backend: str, model: object = None, tokenizer: object = None, **kwargs: object) -> Generator:
    """``backend``: ``hf`` (needs model and tokenizer), ``vllm`` (colocated engine),
    ``vllm-server`` (a running ``vllm serve``, :func:`sgpo.generation.vllm.server_command`)."""
    if backend == "hf":
        from sgpo.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, **kwargs)  # type: ignore[arg-type]
    if backend in ("vllm", "vllm-server"):
        from sgpo.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, server=backend == "vllm-server", **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown generation backend '{backend}' (expected hf, vllm or vllm-server)")
