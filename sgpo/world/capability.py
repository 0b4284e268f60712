"""What a world model can do before RL, measured (issue 17's axes): the per-token NLL it gives
the strong model's traces (the trace-style dial's axis: how far a style is from what the
student writes), its unguided and guided success (p_a, p_g), and its execution accuracy when
the procedure is given (the capacity dial's axis: can it carry a procedure out once told which).
"""

from __future__ import annotations

from typing import Any, Sequence

from sgpo.prompts import PromptStyle


def trace_nll(model: Any, tok: Any, rows: Sequence[dict[str, Any]], style: PromptStyle = PromptStyle(),
              batch_size: int = 64) -> dict[str, Any]:
    """Mean per-token NLL (nats) of each row's ``teacher_response`` and its EOS under the
    unguided prompt: the tokens SFT trains on, scored by ``model`` as it is. Returns the mean
    over all tokens (``nll_per_token``), the token count and each row's own mean."""
    import torch

    from sgpo.world.pretrain import _batch, encode_example

    per_row: list[float] = []
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = _batch([encode_example(tok, style, r["problem"], None, r["teacher_response"]) for r in chunk],
                       tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [N, T, V]
        labels = batch["labels"][:, 1:]  # [N, T-1]: token t+1 predicted at t
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [N, T-1, V]
        mask = labels != -100  # [N, T-1]
        nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask  # [N, T-1]
        sums, lens = nll.sum(dim=1), mask.sum(dim=1)  # [N], [N]
        per_row += (sums / lens).tolist()
        total += float(sums.sum())
        count += int(lens.sum())
    return {"nll_per_token": total / count, "tokens": count, "per_row": per_row}


def execution_accuracy(model: Any, tok: Any, rows: Sequence[dict[str, Any]], style: PromptStyle = PromptStyle(),
                       max_new_tokens: int = 24) -> dict[str, Any]:
    """Share of rows solved when the procedure is given: the unguided prompt plus the native
    trace's opening up to and including its procedure words (``keyword method :``, from the
    row's ``keyword`` and ``method`` labels), then greedy decoding; only the digits are the
    model's. Graded by :func:`sgpo.rewards.score` on the opening plus the continuation."""
    import torch

    from sgpo.rewards import score

    solved = []
    model.eval()
    for r in rows:
        opening = f"{r['keyword']} {r['method']} :"
        prompt = tok(style.render(tok, r["problem"], None), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + tok(opening, add_special_tokens=False)["input_ids"]])  # [1, T]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = opening + tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        solved.append(score(text, r["answer"]))
    return {"accuracy": sum(solved) / len(solved), "n": len(solved)}


def success_rates(model: Any, tok: Any, rows: Sequence[dict[str, Any]], samples: int = 4, temperature: float = 1.0,
                  seed: int = 0, max_new_tokens: int = 32) -> dict[str, Any]:
    """p_a (unguided) and p_g (with each row's strategy) as avg@``samples``, through the
    evaluation's own sampling and grading path."""
    import tempfile

    from sgpo.evaluation.runner import evaluate_records
    from sgpo.generation import SamplingConfig

    sampling = SamplingConfig(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, guided in (("p_a", False), ("p_g", True)):
            recs = [dict(r, strategy=r["strategy"] if guided else None) for r in rows]
            res, _ = evaluate_records(model, tok, recs, key, sampling, samples, output_dir=tmp, model_id="world",
                                      show_progress=False)
            out[key] = res["avg@k"]
            out[f"{key}_ci95"] = res["ci95"]
    return out
