"""Pre-training the strategy world's model from scratch, and its cache.

A small ``LlamaForCausalLM`` learns, by supervised next-token prediction on the responses, to
execute whatever procedure the ``<strategy>`` block names and, without a strategy, to execute a
random one (the pre-training data pairs surfaces with random procedures). The result is saved
as an ordinary model folder (config, safetensors, tokenizer with its chat template) under
``$SGPO_CACHE/world/<hash>`` (default ``~/.cache/sgpo``), keyed by a hash of every setting
that shapes it, so it is built once and then loaded like any other model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgpo.prompts import PromptStyle
from sgpo.world.tasks import WorldSpec, pretrain_example
from sgpo.world.tokenizer import build_tokenizer

FORMAT_VERSION = 3  # bump when the training code changes what a cached model is

# named worlds: "single" (a keyword names the procedure; the demo's) and "pair" (an order word
# and a shift word, with the transfer and validation splits; the sweep's)
WORLDS: dict[str, WorldSpec] = {"single": WorldSpec(), "pair": WorldSpec(keyword_parts=2, valid_share=0.1)}


@dataclass(frozen=True)
class PretrainSpec:
    """The model's shape and its supervised pre-training run."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    steps: int = 700
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    seed: int = 0


@dataclass(frozen=True)
class WorldConfig:
    tasks: WorldSpec = field(default_factory=WorldSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)

    def key(self) -> str:
        """Cache key: every setting pre-training reads (the task settings less the map and the
        splits, :meth:`WorldSpec.pretrain_fingerprint`), the prompt format the model is trained
        with, the version. Worlds that differ only in their keyword -> procedure map share a model."""
        blob = json.dumps({"tasks": self.tasks.pretrain_fingerprint(), "pretrain": asdict(self.pretrain),
                           "prompt": PromptStyle(format="plain").render(_PlainTemplate(), "{p}", "{s}"),
                           "version": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def seeded_world(name: str = "single", seed: int = 0, tasks: dict[str, Any] | None = None,
                 pretrain: dict[str, Any] | None = None) -> WorldConfig:
    """World seed ``seed`` of the named world: its own keyword -> procedure map (``map_seed``)
    and its own pre-training seed, so seeds differ in the map and in the pre-trained model.
    ``tasks`` and ``pretrain`` override :class:`WorldSpec` and :class:`PretrainSpec` fields (a
    dial's setting, e.g. ``{"trace_style": "T2"}``, ``{"hidden_size": 256}``)."""
    from dataclasses import fields, replace

    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r} (have {', '.join(WORLDS)})")
    for what, cls, values in (("tasks", WorldSpec, tasks), ("pretrain", PretrainSpec, pretrain)):
        unknown = sorted(set(values or {}) - {f.name for f in fields(cls)} - {"seed", "map_seed"})
        if unknown or {"seed", "map_seed"} & set(values or {}):
            raise ValueError(f"seeded_world {what} overrides: unknown {unknown} or a seed field (the world seed "
                             f"sets map_seed and seed); {cls.__name__} has {', '.join(f.name for f in fields(cls))}")
    return WorldConfig(tasks=replace(WORLDS[name], map_seed=seed, **(tasks or {})),
                       pretrain=replace(PretrainSpec(seed=seed), **(pretrain or {})))


class _PlainTemplate:
    """A stand-in tokenizer without a chat template: renders the prompt text for the cache key."""

    chat_template = None


def encode_example(tok: Any, style: PromptStyle, problem: str, strategy: str | None,
                   response: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) with the prompt masked (-100): the loss is on the response and its EOS."""
    prompt = tok(style.render(tok, problem, strategy), add_special_tokens=False)["input_ids"]
    answer = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [N, T]
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # [N, T]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [N, T]
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def build_model(cfg: WorldConfig, tok: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    p = cfg.pretrain
    torch.manual_seed(p.seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                         num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
                         num_key_value_heads=p.num_heads, max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config)


def pretrain(cfg: WorldConfig, log_every: int = 50, progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Train the world's model from scratch; returns (model, tokenizer, stats)."""
    import torch
    from tqdm.auto import tqdm

    tok = build_tokenizer(cfg.tasks)
    model = build_model(cfg, tok)
    p, style = cfg.pretrain, PromptStyle()
    rng = random.Random(f"sgpo-world-pretrain:{p.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < p.warmup_steps:
            return (step + 1) / p.warmup_steps
        t = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(p.steps), desc="pre-train strategy world", unit="step", disable=not progress)
    for step in bar:
        exs = [pretrain_example(cfg.tasks, rng) for _ in range(p.batch_size)]
        batch = _batch([encode_example(tok, style, e.problem, e.strategy, e.response) for e in exs], tok.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == p.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-log_every:]) / len(losses[-log_every:]):.3f}")
    model.eval()
    stats = {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.perf_counter() - t0, 1),
             "parameters": sum(x.numel() for x in model.parameters()), "vocab_size": len(tok)}
    return model, tok, stats


def cache_root() -> Path:
    from sgpo.models import cache_dir

    return cache_dir() / "world"


def world_model_path(cfg: WorldConfig | None = None, cache: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """The pre-trained world model's folder, pre-training it on first use (a few minutes on
    2 CPU cores). ``world.json`` in the folder records the settings and pre-training stats."""
    from sgpo.cache import cached_entry
    from sgpo.models import save_model_folder

    cfg = cfg or WorldConfig()
    target = Path(cache) if cache else cache_root() / cfg.key()

    def build(folder: Path) -> None:  # under the entry's lock: processes that need it wait for one build
        model, tok, stats = pretrain(cfg, progress=progress)
        info = {"key": cfg.key(), "tasks": cfg.tasks.pretrain_fingerprint(), "pretrain": asdict(cfg.pretrain),
                "stats": stats}
        save_model_folder(model, tok, folder, {"world.json": json.dumps(info, indent=2)})

    return cached_entry(target, build, what=f"the strategy-world model {target.name}",
                        required=("config.json", "model.safetensors", "tokenizer.json", "world.json"))
