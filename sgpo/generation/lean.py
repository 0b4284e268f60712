"""sgpo's own sampler for decoder-only Llama models: the HF backend's default
(``system.generation_sampler: lean``), with transformers ``model.generate`` kept as the
reference path (``generate``).

Where the time of ``model.generate`` goes on small batches is per-token bookkeeping (mask
building, logits processors, stopping criteria, cache objects), not math. This loop does only:

- **One prefill per distinct prompt.** A prompt sampled G times is run through the model once;
  its keys and values are then copied into the G rows that decode from it.
- **Prefill by length.** Prompts are sorted by length and prefilled in groups of similar
  length, so short (unguided) prompts are not padded to long (guided) ones; the groups' caches
  are then placed side by side, right-aligned, in one decode batch of up to ``batch_size`` rows.
- **A bare decode step.** The model's own modules (embedding, norms, projections, rotary
  embedding, MLP, LM head) on a preallocated cache that grows ``GROW`` columns at a time,
  attention by ``torch.nn.functional.scaled_dot_product_attention`` over the whole cache
  tensor with a mask of the valid keys (a contiguous tensor: slicing it per step made CPU
  attention 2-3x slower), the LM head on the last position only.
- **Own sampling** with the run's temperature and top-p only (what :class:`SamplingConfig`
  holds; greedy at temperature 0), from a ``torch.Generator`` seeded with ``sampling.seed``.
- **Stop per row.** A row ends on its first EOS; finished rows are dropped from the batch once
  they are a quarter of it (each drop copies the cache, so it is batched).
- **Targets on the way.** For the prompts asked (``keep_targets``), each step's top-k of
  softmax(logits / T) and the sampled token's log-prob are kept
  (:func:`sgpo.core.teacher_targets_from_logits`): with ``algorithm.teacher: rollout`` these are
  SGPO's teacher targets for guided trajectories, which then need no second forward.

The distribution sampled is the model's, softmax(logits / T) restricted to the top-p nucleus,
the same as ``model.generate`` with the same settings (tests/test_lean_sampler.py checks greedy
decoding token for token and the sampled distribution with a chi-square test). Models it does
not handle (:func:`unsupported_reason`) go through ``model.generate``, logged once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sgpo.core import compute_dtype, teacher_targets_from_logits
from sgpo.generation.base import SamplingConfig

SUPPORTED = ("LlamaForCausalLM",)  # model classes whose forward this module reproduces
DROP_SHARE = 0.25  # drop finished rows once they are this share of the decode batch
GROW = 64  # cache columns added at a time: attention reads whole (contiguous) cache tensors


def unsupported_reason(model: Any) -> str | None:
    """Why the lean sampler cannot run ``model`` (None when it can)."""
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"{name} is not one of {', '.join(SUPPORTED)}"
    cfg = model.config
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return f"{name} with pretraining_tp={cfg.pretraining_tp}"
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or any(type(layer).__name__ != "LlamaDecoderLayer" for layer in layers):
        return f"{name} whose decoder layers are not LlamaDecoderLayer (patched or wrapped)"
    return None


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the nucleus: the smallest set of the most likely tokens
    whose probability reaches ``top_p`` (the most likely token is always kept). [n, V] -> [n, V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [n, V]
    probs = sorted_logits.softmax(-1)
    # a token is outside when the tokens ranked before it already reach top_p
    outside = probs.cumsum(-1) - probs >= top_p  # [n, V], False at rank 0
    return logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))


def next_tokens(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from float32 logits [n, V]: argmax at temperature 0, else a draw from
    softmax(top_p_filter(logits / T)). Returns [n] ids."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    probs = top_p_filter(logits / sampling.temperature, sampling.top_p).softmax(-1)  # [n, V]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@dataclass
class _Group:
    """Prompts prefilled together: similar lengths, left-padded to the longest."""

    prompts: list[int]  # indices into the call's prompts
    counts: list[int]  # rows (samples) of each in the decode batch


def plan_batches(lengths: Sequence[int], ns: Sequence[int], batch_size: int,
                 slack: float = 0.125) -> list[list[_Group]]:
    """Decode batches of at most ``batch_size`` rows, each a list of prefill groups. Prompts go
    longest first; a prompt's samples stay in one batch unless they alone exceed it. A new
    prefill group starts where a prompt is shorter than the group's longest by more than
    ``slack`` of it (at least 2 tokens), so lengths that differ much never pad each other."""
    order = sorted((i for i in range(len(ns)) if ns[i] > 0), key=lambda i: -lengths[i])
    batches: list[list[_Group]] = []
    rows = batch_size  # rows in the open batch (full: open a new one)
    for i in order:
        left = ns[i]
        while left:
            if rows == batch_size or (rows + left > batch_size and left <= batch_size):
                batches.append([])
                rows = 0
            take = min(left, batch_size - rows)
            groups = batches[-1]
            if groups and lengths[groups[-1].prompts[0]] - lengths[i] <= max(2, slack * lengths[groups[-1].prompts[0]]):
                groups[-1].prompts.append(i)
                groups[-1].counts.append(take)
            else:
                groups.append(_Group([i], [take]))
            rows += take
            left -= take
    return batches


class LeanSampler:
    """Samples completions of token-id prompts from a supported model (see the module doc)."""

    def __init__(self, model: Any, eos_ids: set[int], pad_id: int):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the lean sampler cannot run this model: {reason}")
        self.model, self.base, self.head = model, model.model, model.lm_head
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.pad_id = pad_id
        cfg = model.config
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = cfg.num_attention_heads // self.n_kv  # query heads per key/value head

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], ns: Sequence[int], sampling: SamplingConfig,
               batch_size: int, generator: torch.Generator | None = None, return_logprobs: bool = False,
               keep_targets: Sequence[bool] | None = None, top_k: int = 0) -> list[list[tuple]]:
        """``ns[i]`` completions of prompt ``i``: out[i][j] = (token ids, "stop" | "length",
        log-probs [T] of the sampled tokens under logits / T when ``return_logprobs`` else None,
        targets or None). Token ids include the EOS a row stopped on. Where ``keep_targets[i]``
        (and T > 0), targets = (top-``top_k`` ids [T, K], their log-probs [T, K], the sampled
        token's log-prob [T]) of softmax(logits / T), K = V when ``top_k`` is 0."""
        lengths = [len(p) for p in prompts]
        if any(n and not length for n, length in zip(ns, lengths)):
            raise ValueError("the lean sampler needs at least one prompt token per prompt")
        out: list[list[Any]] = [[] for _ in prompts]
        keep = [bool(k) and sampling.temperature > 0 for k in keep_targets] if keep_targets else [False] * len(ns)
        if sampling.max_new_tokens < 1:
            for i, n in enumerate(ns):
                out[i] = [([], "length", torch.zeros(0) if return_logprobs else None, None)] * n
            return out
        for groups in plan_batches(lengths, ns, batch_size):
            for i, row in self._decode(prompts, groups, sampling, generator, return_logprobs, keep, top_k):
                out[i].append(row)
        return out

    # -- one decode batch -----------------------------------------------------------------------
    def _decode(self, prompts: Sequence[Sequence[int]], groups: list[_Group], sampling: SamplingConfig,
                generator: torch.Generator | None, return_logprobs: bool, keep: list[bool],
                top_k: int) -> list[tuple[int, Any]]:
        device = self.head.weight.device
        width = max(len(prompts[g.prompts[0]]) for g in groups)  # W: the batch's longest prompt
        steps = sampling.max_new_tokens
        total = width + steps - 1  # cache columns: prompt, then every fed token (the last is not fed)
        cap = min(total, width + GROW)  # columns allocated
        n = sum(sum(g.counts) for g in groups)
        layers = self.base.layers
        keys = [torch.zeros(n, self.n_kv, cap, self.head_dim, device=device, dtype=self.head.weight.dtype)
                for _ in layers]  # [n, H_kv, cap, d] each
        values = [torch.zeros_like(k) for k in keys]
        valid = torch.zeros(n, cap, dtype=torch.bool, device=device)  # [n, cap] keys a row attends to
        positions = torch.zeros(n, dtype=torch.long, device=device)  # [n] position id of the next fed token
        owner: list[int] = []  # row -> prompt index
        first_logits = []
        row = 0
        for g in groups:  # prefill, then copy each prompt's cache into its rows (right-aligned at W)
            ids = [list(prompts[i]) for i in g.prompts]
            kv, mask, logits = self._prefill(ids, device)  # per layer ([b, H_kv, L, d] x2), [b, L], [b, V]
            rep = torch.tensor(g.counts, device=device)
            src = torch.repeat_interleave(torch.arange(len(ids), device=device), rep)  # [rows of g]
            rows = slice(row, row + src.shape[0])
            L = mask.shape[1]
            for layer, (k, v) in enumerate(kv):
                keys[layer][rows, :, width - L:width] = k[src]
                values[layer][rows, :, width - L:width] = v[src]
            valid[rows, width - L:width] = mask[src]
            positions[rows] = mask.sum(1)[src]
            first_logits.append(logits[src])
            owner += [i for i, c in zip(g.prompts, g.counts) for _ in range(c)]
            row += src.shape[0]
        logits = torch.cat(first_logits)  # [n, V]
        vocab = logits.shape[-1]
        k = top_k or vocab
        kept = [r for r in range(n) if keep[owner[r]]]
        slot = torch.full((n,), -1, dtype=torch.long, device=device)  # [n] row -> its targets' slot, -1: none
        slot[kept] = torch.arange(len(kept), device=device)
        if kept:
            t_ids = torch.zeros(len(kept), steps, k, dtype=torch.long, device=device)  # [n_kept, T, K]
            lp_dtype = compute_dtype(logits.dtype)
            t_lp = torch.zeros(len(kept), steps, k, device=device, dtype=lp_dtype)  # [n_kept, T, K]
            t_samp = torch.zeros(len(kept), steps, device=device, dtype=lp_dtype)  # [n_kept, T]
        alive = torch.arange(n, device=device)  # [m] original row of each live row
        done = torch.zeros(n, dtype=torch.bool, device=device)  # [m]
        tokens_out = torch.full((n, steps), self.pad_id, dtype=torch.long, device=device)  # [n, T]
        lp_out = torch.zeros(n, steps, device=device, dtype=compute_dtype(logits.dtype)) if return_logprobs else None
        lengths = torch.full((n,), steps, dtype=torch.long, device=device)  # [n] completion lengths
        stopped = torch.zeros(n, dtype=torch.bool, device=device)
        eos = self.eos.to(device)
        finished = 0  # finished rows still in the batch
        for t in range(steps):
            logits = logits.to(compute_dtype(logits.dtype))  # float32 (float64 for a float64 model)
            tok = next_tokens(logits, sampling, generator)  # [m]
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            tokens_out[alive, t] = tok
            if lp_out is not None:
                scale = sampling.temperature if sampling.temperature > 0 else 1.0
                lp_out[alive, t] = torch.log_softmax(logits / scale, -1).gather(-1, tok[:, None])[:, 0]
            if kept:
                s = slot[alive]
                sel = s >= 0
                if bool(sel.any()):
                    lp_k, ids_k, lp_s = teacher_targets_from_logits(logits[sel] / sampling.temperature, k, tok[sel])
                    t_ids[s[sel], t], t_lp[s[sel], t], t_samp[s[sel], t] = ids_k, lp_k, lp_s
            hit = torch.isin(tok, eos) & ~done  # [m] rows ending on this token
            ended = int(hit.sum())
            if ended:
                lengths[alive[hit]] = t + 1
                stopped[alive[hit]] = True
                done |= hit
                finished += ended
            if t == steps - 1 or finished == done.shape[0]:
                break
            col = width + t  # the column this token's keys and values go to
            keep = None
            if finished and finished >= DROP_SHARE * done.shape[0]:
                keep = (~done).nonzero()[:, 0]  # [m'] live rows
                positions, alive, done, tok = positions[keep], alive[keep], done[keep], tok[keep]
                finished = 0
            if keep is not None or col == cap:
                cap = min(total, cap + GROW) if col == cap else cap
                keys = [_resize(k, keep, col, cap) for k in keys]
                values = [_resize(v, keep, col, cap) for v in values]
                valid = _resize(valid, keep, col, cap)
            valid[:, col] = True
            logits = self._step(tok, positions, keys, values, valid, col)  # [m, V]
            positions = positions + 1
        toks, lens, stop = tokens_out.tolist(), lengths.tolist(), stopped.tolist()
        result = []
        slots = slot.tolist()
        for r in range(n):
            lp = lp_out[r, :lens[r]].cpu() if lp_out is not None else None
            j, T = slots[r], lens[r]
            targets = (t_ids[j, :T], t_lp[j, :T], t_samp[j, :T]) if j >= 0 else None
            result.append((owner[r], (toks[r][:T], "stop" if stop[r] else "length", lp, targets)))
        return result

    # -- the model's forward, by its own modules --------------------------------------------------
    def _prefill(self, ids: list[list[int]], device: torch.device
                 ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
        """Left-padded prompts [b, L] through the model: each layer's rotated keys and values
        [b, H_kv, L, d], the padding mask [b, L] and the last position's logits [b, V]."""
        L = max(len(r) for r in ids)
        x = torch.full((len(ids), L), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(ids), L, dtype=torch.bool, device=device)
        for i, r in enumerate(ids):
            x[i, L - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
            mask[i, L - len(r):] = True
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)  # [b, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        # a padding position attends to itself only, so every row of the softmax has a key
        attend = (causal & mask[:, None, :]) | torch.eye(L, dtype=torch.bool, device=device)  # [b, L, L]
        attend = attend[:, None]  # [b, 1, L, L]
        h = self.base.embed_tokens(x)  # [b, L, H]
        cos, sin = self.base.rotary_emb(h, pos)
        kv = []
        for layer in self.base.layers:
            a = layer.self_attn
            r = layer.input_layernorm(h)
            q, k, v = self._qkv(a, r, cos, sin)  # [b, H_q, L, d], [b, H_kv, L, d] x2
            kv.append((k, v))
            o = F.scaled_dot_product_attention(q, _repeat(k, self.groups), _repeat(v, self.groups),
                                               attn_mask=attend, scale=a.scaling)  # [b, H_q, L, d]
            h = h + a.o_proj(o.transpose(1, 2).reshape(h.shape[0], L, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.head(self.base.norm(h[:, -1:]))[:, 0]  # [b, V]
        return kv, mask, logits

    def _step(self, tok: torch.Tensor, positions: torch.Tensor, keys: list[torch.Tensor],
              values: list[torch.Tensor], valid: torch.Tensor, col: int) -> torch.Tensor:
        """Feed one token per row [m] at cache column ``col``; logits of the next one [m, V].
        ``valid`` [m, cap]: the columns each row attends to (``col`` included)."""
        m = tok.shape[0]
        h = self.base.embed_tokens(tok[:, None])  # [m, 1, H]
        cos, sin = self.base.rotary_emb(h, positions[:, None])
        attend = valid[:, None, None, :]  # [m, 1, 1, cap]
        for layer, k_cache, v_cache in zip(self.base.layers, keys, values):
            a = layer.self_attn
            q, k, v = self._qkv(a, layer.input_layernorm(h), cos, sin)  # [m, H_q, 1, d], [m, H_kv, 1, d]
            k_cache[:, :, col] = k[:, :, 0]
            v_cache[:, :, col] = v[:, :, 0]
            # the query heads that share a key/value head attend together: [m, H_kv, groups, d]
            q = q.view(m, self.n_kv, self.groups, self.head_dim)
            o = _attend(q, k_cache, v_cache, attend, a.scaling)  # [m, H_kv, groups, d]
            h = h + a.o_proj(o.reshape(m, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.head(self.base.norm(h))[:, 0]  # [m, V]

    def _qkv(self, a: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        b, L = x.shape[:2]
        q = a.q_proj(x).view(b, L, -1, self.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(b, L, -1, self.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(b, L, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention: q [m, H_kv, g, d] over k, v [m, H_kv, C, d] where ``attend``
    [m, 1, 1, C]. SDPA on accelerators; on CPU two matmuls and a softmax (measured about 10%
    faster there than SDPA's flash kernel for one query position)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(~attend, float("-inf"))  # [m, H_kv, g, C]
    return torch.matmul(scores.softmax(-1), v)


def _repeat(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[b, H_kv, L, d] -> [b, H_kv * groups, L, d]: each key/value head for its query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _resize(cache: torch.Tensor, keep: torch.Tensor | None, used: int, cap: int) -> torch.Tensor:
    """A cache [m, ..., C(, d)] with the ``keep`` rows (all when None) and ``cap`` columns (dim 2
    for keys and values, dim 1 for the mask), copying only the ``used`` columns written."""
    rows = cache.shape[0] if keep is None else keep.shape[0]
    dim = 1 if cache.dim() == 2 else 2
    shape = list(cache.shape)
    shape[0], shape[dim] = rows, cap
    out = torch.zeros(shape, dtype=cache.dtype, device=cache.device)
    src = cache if keep is None else cache[keep]
    out.narrow(dim, 0, used).copy_(src.narrow(dim, 0, used))
    return out
