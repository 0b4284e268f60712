"""Worker for tests/test_distributed.py (not collected by pytest): one gradient accumulation
of a fixed global batch of training sequences, split across however many processes run it.
Writes the global loss and the (process-averaged) gradients from rank 0."""

import sys

import torch

from sgpo.trainer.batch import TrainSequence
from sgpo.core import LossSettings
from sgpo.trainer.loss import PolicyLoss
from sgpo.trainer.update import accumulate_gradients


def fixed_batch(vocab: int, k: int = 8, shared: bool = False) -> list[TrainSequence]:
    """12 sequences of every role; ``shared``: over three prompts (rows 0, 3, 6, 9 share one)."""
    g = torch.Generator().manual_seed(0)
    seqs = []
    g_shared = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=g_shared).tolist() for n in (2, 5, 3)]
    for i in range(12):
        role = ("rl", "distill", "nll", "offpolicy")[i % 4]
        p = torch.randint(3, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        p = prompts[i % 3] if shared else p
        t = int(torch.randint(1, 7, (1,), generator=g))
        c = torch.randint(3, vocab, (t,), generator=g).tolist()
        s = TrainSequence(p, c, role, advantage=float(torch.randn(1, generator=g)), weight=float(torch.rand(1, generator=g)))
        if role == "distill":
            lp = torch.log_softmax(torch.randn(t, vocab, generator=g, dtype=torch.float64), -1)
            s.teacher_logp, s.support_ids = lp.topk(k, -1)
            s.teacher_logp_sampled = lp.gather(-1, torch.tensor(c)[:, None])[:, 0]
        seqs.append(s)
    return seqs


def main(model_dir: str, out: str, share: str = "") -> None:
    """``share``: the batch over three prompts, each run once per micro-batch ("1") or with
    every row whole ("0"); empty: distinct prompts."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    acc = Accelerator()
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    module = acc.prepare(PolicyLoss(lm, LossSettings(), temperature=1.0, chunk_size=5))
    seqs = fixed_batch(lm.config.vocab_size, shared=bool(share))[acc.process_index::acc.num_processes]
    loss, _ = accumulate_gradients(acc, module, seqs, micro_batch_size=2 if not share else 4, pad_id=0,
                                   normalizer="all", share_prompts=share == "1")
    if acc.is_main_process:
        grads = {n: p.grad.detach().clone() for n, p in acc.unwrap_model(module).named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads, "world": acc.num_processes}, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
