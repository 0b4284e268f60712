"""The policy's forward up to the LM head, shared by the loss (with gradient) and the
rollout-time quantities (teacher targets, old log-probs; without): the decoder stack's hidden
states at the positions that predict each packed completion token.

Two ways to the same hidden states: :func:`packed_hidden` runs every row prompt + completion
(the reference); :func:`shared_prompt_hidden` runs each distinct prompt of a micro-batch once
and its rows' completions against the prompt's keys and values (gradient flows back through
them to the one prompt pass), which skips (G - 1) / G of the prompt tokens of a group of G
rollouts. :func:`shared_prompt_unsupported` says where the second is not proven equal."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from sgpo.lora import base_model
from sgpo.trainer.batch import SharedPrompts

# decoder families whose cached forward is checked against the full one (tests/test_shared_prompt.py)
SHARED_PROMPT_MODELS = ("llama", "qwen2")


def base_and_head(lm: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (returns hidden states) and the LM head of a causal LM (under a peft
    wrapper: of the model whose layers carry the adapter)."""
    lm = base_model(lm)
    if getattr(lm.config, "final_logit_softcapping", None) or getattr(lm.config, "logit_scale", None):
        raise NotImplementedError("models that rescale logits after the LM head are not supported yet")
    return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()


def packed_hidden(base: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:  # [M, H]
    """Hidden states of rows [n, L] at the M (row, position) pairs that predict the packed
    completion tokens (position t predicts token t+1; :func:`sgpo.trainer.batch.pack_rows`)."""
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [n, L, H]
    return hidden[rows, positions]


def shared_prompt_unsupported(lm: Any, distributed_type: str = "NO") -> str | None:
    """Why :func:`shared_prompt_hidden` may not stand in for :func:`packed_hidden` on ``lm``
    (None when it may): a decoder family not checked, a sliding window, gradient checkpointing
    (transformers turns the cache off there), or a distributed type other than one process or
    DDP (FSDP, DeepSpeed, ...: their parameter hooks are not checked with two forwards of a layer
    per backward)."""
    lm = base_model(lm)
    cfg = lm.config
    if cfg.model_type not in SHARED_PROMPT_MODELS:
        return f"model type {cfg.model_type!r} is not one of {', '.join(SHARED_PROMPT_MODELS)}"
    if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
        return "a sliding-window attention model"
    if getattr(lm, "is_gradient_checkpointing", False):
        return "gradient checkpointing (no cache in a checkpointed forward)"
    if distributed_type != "NO" and not distributed_type.startswith("MULTI_"):  # DDP is MULTI_*
        return f"{distributed_type} (sharded parameters: each layer must run once per backward)"
    return None


def _cache_kwarg(base: torch.nn.Module) -> str:
    """The decoder's keyword for a key/value cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier)."""
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def shared_prompt_hidden(base: torch.nn.Module, shared: SharedPrompts, rows: torch.Tensor) -> torch.Tensor:  # [M, H]
    """The hidden states :func:`packed_hidden` returns, with each distinct prompt run once:
    the prompts' pass [P, L_p] keeps its keys and values, which are indexed out to the n rows
    (a differentiable copy: each row's gradient adds up in its prompt's pass) and attended to by
    the completions' pass [n, L_c]. Right-padded prompts leave holes in the middle of a row,
    masked by ``shared.attention_mask``; positions continue each row's own prompt. ``rows`` [M]
    is the row of each packed token."""
    key = _cache_kwarg(base)
    out = base(input_ids=shared.prompt_ids, attention_mask=shared.prompt_mask, use_cache=True)
    width = shared.prompt_ids.shape[1]
    # [n, H] predicts each row's first completion token. Row gathers go through index_select,
    # whose backward (index_add) is several times cheaper on CPU than advanced indexing's
    first = out.last_hidden_state.flatten(0, 1).index_select(0, shared.owner * width + shared.last)
    if shared.completion_ids.shape[1] == 0:  # every completion is one token
        return first.index_select(0, rows)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    _expand_cache(cache, shared.owner)  # [P, ...] -> [n, ...] per layer
    rest = base(input_ids=shared.completion_ids, attention_mask=shared.attention_mask,
                position_ids=shared.position_ids, use_cache=True, **{key: cache}).last_hidden_state  # [n, L_c, H]
    hidden = torch.cat([first[:, None], rest], 1)  # [n, 1 + L_c, H]: column j predicts completion token j
    return hidden.flatten(0, 1).index_select(0, rows * hidden.shape[1] + shared.columns)


def _expand_cache(cache: Any, owner: torch.Tensor) -> None:
    """Each layer's keys and values [P, H_kv, L_p, d] -> [n, H_kv, L_p, d], row i its prompt's."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(x, "keys") and hasattr(x, "values") for x in layers):
        cache.batch_select_indices(owner)  # transformers' own (advanced indexing)
        return
    for layer in layers:
        layer.keys, layer.values = layer.keys.index_select(0, owner), layer.values.index_select(0, owner)
