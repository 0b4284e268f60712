"""The update's shared-prompt forward (``system.share_prompt_forward``) against the reference
that runs every row prompt + completion: the same loss and the same gradient of every
parameter, on tiny random Llama and Qwen2 models, with LoRA, and through micro-batched
accumulation; and where it is refused."""

import pytest
import torch

from sgpo.core import LossSettings
from sgpo.trainer.batch import TrainSequence, collate, share_prompts
from sgpo.trainer.forward import shared_prompt_unsupported
from sgpo.trainer.loss import PolicyLoss

VOCAB = 64


def _llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **kw})).double()


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                        tie_word_embeddings=False, pad_token_id=0)).double()


def _batch(k: int = 8) -> list[TrainSequence]:
    """Three prompts of lengths 5, 2 and 7 (right-padding leaves holes between a short prompt
    and its completion), each with several rows of every role, completions of 1 to 6 tokens,
    and one row whose prompt appears once."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 2, 7, 3)]
    roles = ("rl", "distill", "nll", "offpolicy", "rl")
    seqs = []
    for i in range(13):
        p = prompts[3] if i == 12 else prompts[i % 3]
        t = 1 + i % 6
        c = torch.randint(3, VOCAB, (t,), generator=g).tolist()
        s = TrainSequence(p, c, roles[i % 5], advantage=float(torch.randn(1, generator=g)),
                          weight=float(torch.rand(1, generator=g)), guided=i % 2 == 1)
        if s.role == "distill":
            lp = torch.log_softmax(torch.randn(t, VOCAB, generator=g, dtype=torch.float64), -1)
            s.teacher_logp, s.support_ids = lp.topk(k, -1)
            s.teacher_logp_sampled = lp.gather(-1, torch.tensor(c)[:, None])[:, 0]
        seqs.append(s)
    return seqs


def _loss_and_grads(module, seqs, share: bool, micro: int = 64):
    module.zero_grad(set_to_none=True)
    total = 0.0
    for i in range(0, len(seqs), micro):
        mb = collate(seqs[i:i + micro], 0, torch.device("cpu"), share=share)
        assert (mb.shared is not None) == share
        loss, _ = module(mb, 17.0)
        loss.backward()
        total += float(loss)
    return total, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _check_equal(module, seqs, micro: int = 64):
    ref_loss, ref = _loss_and_grads(module, seqs, share=False, micro=micro)
    loss, got = _loss_and_grads(module, seqs, share=True, micro=micro)
    assert loss == pytest.approx(ref_loss, abs=1e-12) and ref_loss != 0
    assert got.keys() == ref.keys() and len(ref) > 0
    # The forward is bit-identical in float64, the gradients are not quite: the models' RMSNorm
    # computes in float32 whatever the input dtype, and the shared path sums a prompt's G row
    # gradients before its norms, the reference after (measured up to 5e-8 of the largest
    # entry). A wrong position, mask or cache row moves gradients by 1e-3 and more.
    for name, g in ref.items():
        scale = float(g.abs().max())
        assert scale > 0, name  # every parameter is reached, so the comparison means something
        torch.testing.assert_close(got[name], g, rtol=1e-6, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("make", [_llama, _qwen2], ids=["llama", "qwen2"])
def test_shared_prompt_forward_gives_the_reference_loss_and_gradients(make):
    lm = make()
    settings = LossSettings(proximal="c2")
    module = PolicyLoss(lm, settings, temperature=0.7, chunk_size=5).train()
    assert shared_prompt_unsupported(lm) is None
    _check_equal(module, _batch())


def test_shared_prompt_forward_matches_when_micro_batches_split_a_prompts_rows():
    module = PolicyLoss(_llama(), LossSettings(), temperature=1.0, chunk_size=4).train()
    seqs = _batch()[:12]  # three prompts, four rows each; micro-batches of 6 give two rows of each prompt
    _check_equal(module, seqs, micro=6)


def test_shared_prompt_forward_with_a_lora_adapter():
    from sgpo.lora import LoraConfig, add_adapter

    lm = add_adapter(_llama(), LoraConfig(rank=4, target_modules=["q_proj", "v_proj", "up_proj"]), base_name="tiny")
    for n, p in lm.named_parameters():  # B starts at 0: make the adapter's output count
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    module = PolicyLoss(lm, LossSettings(), temperature=1.0, chunk_size=8).train()
    assert shared_prompt_unsupported(lm) is None
    _, grads = _loss_and_grads(module, _batch(), share=True)
    assert grads and all("lora_" in n for n in grads)
    _check_equal(module, _batch())


def test_rows_are_only_shared_where_a_prompt_repeats():
    """13 rows over 4 prompts: P = 4; the short prompt (2 tokens) of row 1 ends at position 1;
    row 1's completion (2 tokens) feeds its first token only, at position 2; with every prompt
    distinct there is nothing to share."""
    seqs = _batch()
    shared = share_prompts([s.prompt_ids for s in seqs], [s.completion_ids for s in seqs], 0, torch.device("cpu"))
    assert shared.prompt_ids.shape == (4, 7) and shared.owner.tolist() == [0, 1, 2] * 4 + [3]
    assert shared.last[1] == 1 and shared.position_ids[1, 0] == 2 and shared.completion_ids.shape == (13, 5)
    assert shared.attention_mask[1].tolist()[:9] == [1, 1, 0, 0, 0, 0, 0, 1, 0]
    distinct = [TrainSequence([i + 3, 4], [5, 6], "nll") for i in range(3)]
    assert share_prompts([s.prompt_ids for s in distinct], [s.completion_ids for s in distinct], 0,
                         torch.device("cpu")) is None
    assert collate(distinct, 0, torch.device("cpu"), share=True).shared is None


def test_shared_prompt_forward_is_refused_where_it_is_not_proven():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert "gpt2" in shared_prompt_unsupported(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2)))
    lm = _llama()
    assert "FSDP" in shared_prompt_unsupported(lm, "FSDP")
    assert "DEEPSPEED" in shared_prompt_unsupported(lm, "DEEPSPEED")
    assert shared_prompt_unsupported(lm, "MULTI_GPU") is None
    lm.gradient_checkpointing_enable()
    assert "checkpointing" in shared_prompt_unsupported(lm)


@pytest.mark.slow
def test_shared_prompt_forward_on_smollm2(smollm2_dir):
    """SmolLM2-135M-Instruct (a real Llama checkpoint, 30 layers, GQA 9/3 heads) in float64."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float64)
    module = PolicyLoss(lm, LossSettings(), temperature=1.0, chunk_size=64).train()
    assert shared_prompt_unsupported(lm) is None
    seqs = [s for s in _batch() if s.role != "distill"]  # the distill targets are over a 64-token vocabulary
    _check_equal(module, seqs)


def test_accumulation_groups_a_prompts_rows_and_matches_the_reference(monkeypatch):
    """Rows interleaved over three prompts (0, 1, 2, 0, 1, 2, ...) in micro-batches of four:
    grouped by prompt they need 4 prompt passes ([0 x4], [1 x4], [2 x4], [3]) instead of 10
    (3 + 3 + 3 + 1);
    loss and gradients equal the whole-row accumulation in the step's order."""
    from accelerate import Accelerator

    from sgpo.trainer.batch import group_by_prompt, split_micro_batches
    import sgpo.trainer.update as update
    from sgpo.trainer.update import accumulate_gradients

    seen = []

    def recording_collate(batch, *args, **kwargs):
        seen.append(batch)
        return collate(batch, *args, **kwargs)

    monkeypatch.setattr(update, "collate", recording_collate)
    seqs = _batch()
    grouped = group_by_prompt(seqs)
    assert [seqs.index(s) for s in grouped] == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11, 12]
    passes = lambda micro: sum(len({tuple(s.prompt_ids) for s in mb}) for mb in micro)  # noqa: E731
    assert passes(split_micro_batches(grouped, 4)) == 4 and passes(split_micro_batches(seqs, 4)) == 10
    acc = Accelerator(cpu=True)
    module = acc.prepare(PolicyLoss(_llama(), LossSettings(), temperature=1.0, chunk_size=8))
    out = {}
    for share in (False, True):
        module.zero_grad(set_to_none=True)
        loss, _ = accumulate_gradients(acc, module, seqs, micro_batch_size=4, pad_id=0, normalizer="all",
                                       share_prompts=share)
        out[share] = loss, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        assert passes(seen[-4:]) == (4 if share else 10)
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-6)  # the update's loss travels as float32
    for name, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], g, rtol=1e-6, atol=1e-6 * float(g.abs().max()), msg=name)
