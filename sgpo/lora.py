"""LoRA adapters (``model.lora``, through ``peft``) for every method.

One adapter serves student and teacher: ``teacher: rollout`` scores the strategy-conditioned
context with the adapted policy itself; ``teacher: initial`` is the same model with the adapter
switched off (:func:`adapter_disabled`), which is exactly the starting policy, so no second copy
of the weights is loaded. Only the adapter is trained; the optimiser holds only its parameters.

What is saved: checkpoints of single-process and DDP runs hold the adapter's parameters alone
(:func:`register_adapter_checkpoints`; optimiser, scheduler and RNG states as usual), so a 7B run's
checkpoint is megabytes, and resuming restores them exactly. FSDP and DeepSpeed save their own
sharded state of every parameter. ``final/`` holds the adapter (``adapter_config.json``,
``adapter_model.safetensors``) and the tokenizer; with ``model.lora.save_merged`` also
``final/merged/``, a plain model with the adapter merged in (:func:`merged_weights`). ``sgpo eval
--model`` takes an adapter folder: the base model named in its ``adapter_config.json`` is loaded and
the adapter merged (:func:`sgpo.models.load_model`). vLLM receives merged weights at each sync.

The loss reads the LM head's weight directly (chunked log-probs, :func:`sgpo.trainer.forward.base_and_head`),
so the output layer cannot carry an adapter; ``target_modules`` naming it is refused."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

MERGED_DIR = "merged"
_ADAPTER = "default"  # peft's adapter name; sgpo trains one adapter


@dataclass
class LoraConfig:
    """LoRA adapter (peft): rank 0 trains every parameter."""

    rank: int = 0  # adapter rank r; 0 = off (full fine-tuning)
    alpha: float = 16.0  # scaling numerator: the update is (alpha / r) B A
    dropout: float = 0.0  # dropout on the adapter's input (training only; rollouts and teacher run without it)
    # modules that get an adapter: names or name suffixes (q_proj, v_proj, ...); [all-linear] = every linear layer but the output
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    save_merged: bool = False  # also write final/merged: the base weights with the adapter merged in

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def validate(self, key: str = "model.lora") -> "LoraConfig":
        if self.rank < 0:
            raise ValueError(f"{key}.rank = {self.rank}: must be >= 0 (0 = no adapter)")
        if not self.alpha > 0:
            raise ValueError(f"{key}.alpha = {self.alpha}: must be > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{key}.dropout = {self.dropout}: must be in [0, 1)")
        if self.enabled and not self.target_modules:
            raise ValueError(f"{key}.target_modules is empty: name the modules that get an adapter, or [all-linear]")
        if "lm_head" in self.target_modules:
            raise ValueError(f"{key}.target_modules names lm_head: the loss reads the output layer's weight directly, "
                             "so it cannot carry an adapter")
        return self


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (peft is imported only where adapters are used)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (its layers carry the adapter), else ``model``."""
    return model.get_base_model() if is_peft(model) else model


def add_adapter(model: Any, cfg: LoraConfig, base_name: str | None = None) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter (peft's init: A random, B zero, so the adapted
    model starts equal to the base) and freeze everything else. ``base_name`` is recorded in
    the adapter's config as the model to load it onto."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg.validate()
    targets: Any = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_name)
    try:
        wrapped = get_peft_model(model, peft_cfg)
    except ValueError as e:  # no module matched target_modules
        from sgpo.errors import UserError

        raise UserError(f"model.lora.target_modules {cfg.target_modules}: {' '.join(str(e).split())[:300]}") from None
    return wrapped


def adapter_disabled(model: Any) -> Any:
    """Context in which ``model`` computes as the base model (``teacher: initial`` under LoRA)."""
    return model.disable_adapter() if is_peft(model) else nullcontext()


def trainable_names(module: Any) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def merged_weights(state: dict[str, Any], scaling: float) -> Iterator[tuple[str, Any]]:
    """The base model's parameters with the adapter merged in, from a peft model's state dict
    (keys ``base_model.model.X``; a layer with an adapter has ``X.base_layer.weight`` and
    ``X.lora_A.default.weight`` [r, in], ``X.lora_B.default.weight`` [out, r]):
    W = W0 + scaling * B @ A, under the base model's own names. Lazily, one tensor at a time
    (vLLM sync of a large model never holds a second full copy)."""
    prefix = "base_model.model."
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, value
            continue
        module, param = name.split(".base_layer.", 1)
        if param == "weight":
            a = state.get(f"{prefix}{module}.lora_A.{_ADAPTER}.weight")
            b = state.get(f"{prefix}{module}.lora_B.{_ADAPTER}.weight")
            if a is None or b is None:
                raise ValueError(f"cannot merge {module}: only linear layers' adapters can be merged (lora_A/lora_B "
                                 "weights not found)")
            if scaling:
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)  # [out, in]
        yield f"{module}.{param}", value


def scaling(cfg: LoraConfig) -> float:
    return cfg.alpha / cfg.rank


def export_weights(model: Any, merge: bool = True) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of the weights an inference engine (vLLM) should load: for a peft model
    the base model's names with the adapter merged in (``merge=False``: the base weights
    themselves, which have the same names, shapes and dtypes), the parameters otherwise."""
    if not is_peft(model):
        for name, p in model.named_parameters():
            yield name, p.data
        return
    peft_cfg = model.peft_config[_ADAPTER]
    state = {k: v.detach() for k, v in model.state_dict().items()}
    # the parameters, as a full-parameter policy sends them (a tied output layer is not sent twice)
    params = {n.replace(".base_layer.", ".") for n, _ in model.get_base_model().named_parameters() if ".lora_" not in n}
    for name, weight in merged_weights(state, peft_cfg.lora_alpha / peft_cfg.r if merge else 0.0):
        if name in params:
            yield name, weight


def save_final(model: Any, state: dict[str, Any], out: Path, cfg: LoraConfig, base_name: str) -> None:
    """``out``: the adapter (from the gathered ``state`` of the peft model); with
    ``cfg.save_merged`` also ``out/merged``: the base model with the adapter merged in."""
    model.peft_config[_ADAPTER].base_model_name_or_path = base_name
    model.save_pretrained(out, state_dict=state)
    if cfg.save_merged:
        merged = dict(merged_weights(state, scaling(cfg)))
        model.get_base_model().save_pretrained(out / MERGED_DIR, state_dict=merged)


def register_adapter_checkpoints(accelerator: Any, module: Any) -> None:
    """Single process and DDP: checkpoints hold the trainable (adapter) parameters of
    ``module`` only, and loading one checks that it has exactly those. (FSDP and DeepSpeed
    write their own sharded states and are left alone.)"""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, m in enumerate(models):
            if m is module and i < len(weights):
                keep = trainable_names(m)
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models: list, input_dir: str) -> None:
        if models and models[0] is module:
            from safetensors.torch import load_file

            path = Path(input_dir) / "model.safetensors"
            state = load_file(path)
            want = trainable_names(module)
            if set(state) != want:
                from sgpo.errors import UserError

                extra, missing = sorted(set(state) - want)[:3], sorted(want - set(state))[:3]
                raise UserError(f"{path}: not this run's adapter (unexpected {extra}, missing {missing})")
            module.load_state_dict(state, strict=False)
            models.pop(0)  # loaded here; accelerate loads the optimiser, scheduler and RNG states

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


__all__ = ["LoraConfig", "add_adapter", "adapter_disabled", "base_model", "is_peft", "merged_weights",
           "export_weights", "save_final", "register_adapter_checkpoints"]
