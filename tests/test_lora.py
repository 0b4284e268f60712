"""LoRA adapters (sgpo.lora, model.lora): config keys, merged weights equal to peft's own
merge, vLLM syncs with merged weights (recording fakes: vLLM needs a GPU and is not installed
here), ``teacher: initial`` is the policy with its adapter off, every method trains the
adapter alone, a SIGKILLed LoRA run resumes to the weights of an uninterrupted one, final/
holds the adapter (and, on request, merged weights) and ``sgpo eval --model`` loads it."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from sgpo.data import build_problems
from sgpo.generation import Completion
from sgpo.lora import LoraConfig, add_adapter, adapter_disabled, export_weights, merged_weights
from sgpo.trainer.config import load_config

LORA = ["model.lora.rank=4", "model.lora.alpha=8.0"]


def _tiny(tiny_model_dir):
    from sgpo.models import load_model

    return load_model(str(tiny_model_dir), dtype="float32")


def _perturbed_adapter(tiny_model_dir, rank=4):
    """A LoRA model whose B matrices are non-zero (a fresh adapter is the identity: B = 0)."""
    lm = add_adapter(_tiny(tiny_model_dir), LoraConfig(rank=rank, alpha=8.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return lm


# -- config ----------------------------------------------------------------------------------


def test_lora_keys_from_set_and_yaml(tmp_path):
    cfg = load_config(None, ["data.path=x", "model.lora.rank=8", "model.lora.target_modules=q_proj,v_proj"])
    assert cfg.model.lora == LoraConfig(rank=8, target_modules=["q_proj", "v_proj"])
    assert LoraConfig().rank == 0 and not LoraConfig().enabled  # off by default
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x}\nmodel:\n  lora: {rank: 16, alpha: 32.0, dropout: 0.05}\n")
    assert load_config(path).validate().model.lora == LoraConfig(rank=16, alpha=32.0, dropout=0.05)
    with pytest.raises(ValueError, match="unknown config key 'model.lora.rnk'"):
        load_config(None, ["model.lora.rnk=8"])
    with pytest.raises(ValueError, match="model.lora.rank = -1"):
        load_config(None, ["data.path=x", "model.lora.rank=-1"]).validate()
    with pytest.raises(ValueError, match="names lm_head"):
        load_config(None, ["data.path=x", "model.lora.rank=4", "model.lora.target_modules=q_proj,lm_head"]).validate()
    with pytest.raises(ValueError, match="model.lora.alpha = 'big': expected float"):
        path.write_text("data: {path: x}\nmodel:\n  lora: {rank: 16, alpha: big}\n")
        load_config(path).validate()


# -- merged weights, vLLM sync, teacher: initial ---------------------------------------------


def test_merged_weights_equal_peft_merge_and_vllm_gets_them(tiny_model_dir):
    """What final/merged and every vLLM sync receive: the base names, W0 + (alpha/r) B A, as
    peft's merge_and_unload computes them; both the colocated engine and the server client
    (recording fakes) get exactly these."""
    import copy

    from sgpo.generation.vllm import VLLMGenerator

    lm = _perturbed_adapter(tiny_model_dir)
    want = copy.deepcopy(lm).merge_and_unload().state_dict()
    got = dict(merged_weights(lm.state_dict(), 8.0 / 4))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    base = _tiny(tiny_model_dir).state_dict()
    assert any(not torch.equal(want[k], base[k]) for k in base)  # the adapter changed the merged weights

    class Engine:
        def __init__(self):
            self.loaded = {}

        def load_weights(self, weights):
            self.loaded.update({n: w.clone() for n, w in weights})

    class Client:
        def __init__(self):
            self.meta, self.sent = None, {}

        def update_named_params(self, metadata, named_params):
            self.meta, self.sent = metadata, {n: w.clone() for n, w in named_params}

        def reset_prefix_cache(self):
            pass

    class LLM:
        def __init__(self, engine):
            from types import SimpleNamespace

            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=engine))))

        def reset_prefix_cache(self):
            pass

    engine, client = Engine(), Client()
    colocated = VLLMGenerator.__new__(VLLMGenerator)
    colocated.server, colocated.is_main, colocated.llm, colocated.sleep_mode = False, True, LLM(engine), False
    colocated.sync_weights(lm)
    server = VLLMGenerator.__new__(VLLMGenerator)
    server.server, server.is_main, server.client = True, True, client
    server.sync_weights(lm)
    for sent in (engine.loaded, client.sent):
        assert sent.keys() == {n for n, _ in _tiny(tiny_model_dir).named_parameters()}
        for k, w in sent.items():
            torch.testing.assert_close(w, want[k], rtol=0, atol=1e-6, msg=k)
    assert [m[0] for m in client.meta] == list(client.sent) and all(m[1] == "float32" for m in client.meta)
    assert [tuple(m[2]) for m in client.meta] == [tuple(w.shape) for w in client.sent.values()]
    plain = _tiny(tiny_model_dir)  # a full-parameter policy still sends its parameters as they are
    assert dict(export_weights(plain)).keys() == dict(plain.named_parameters()).keys()


def test_teacher_initial_is_the_policy_with_its_adapter_off(tiny_model_dir):
    """``teacher: initial`` under LoRA: the adapted policy with the adapter switched off gives
    the starting model's teacher targets exactly, with no second copy of the weights."""
    from sgpo.trainer.rollouts import teacher_targets

    lm, initial = _perturbed_adapter(tiny_model_dir), _tiny(tiny_model_dir)
    prompts, comps = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15, 16, 17]]
    kw = dict(top_k=8, pad_id=0, batch_size=2, chunk_size=3)
    ref = teacher_targets(initial, prompts, comps, **kw)
    with adapter_disabled(lm):
        off = teacher_targets(lm, prompts, comps, **kw)
    on = teacher_targets(lm, prompts, comps, **kw)
    for r, o, a in zip(ref, off, on):
        torch.testing.assert_close(o.teacher_logp, r.teacher_logp, rtol=0, atol=1e-6)
        assert torch.equal(o.support_ids, r.support_ids)
        assert not torch.allclose(a.teacher_logp, r.teacher_logp, atol=1e-4)  # the adapter is back on after


def test_the_step_scores_teacher_initial_with_the_adapter_off(tiny_model_dir):
    """The trainer's phase (sgpo.trainer.methods.attach_teacher_targets) with
    ``teacher_adapter_off``: the distilled tokens' targets are the starting model's; without
    the flag they are the adapted policy's (``teacher: rollout``)."""
    from sgpo.trainer import methods
    from sgpo.trainer.batch import TrainSequence
    from sgpo.trainer.config import AlgorithmConfig
    from sgpo.trainer.rollouts import teacher_targets

    lm, initial = _perturbed_adapter(tiny_model_dir), _tiny(tiny_model_dir)
    algo = AlgorithmConfig(top_k=8)

    def targets(adapter_off):
        seqs = [TrainSequence([5, 6], [11, 12, 13], "distill", teacher_prompt_ids=[5, 9, 9, 6])]
        ctx = methods.StepContext(None, None, lm, lm, algo, None, 0, 2, 3, teacher_adapter_off=adapter_off)
        methods.attach_teacher_targets(ctx, seqs)
        return seqs[0].teacher_logp

    ref = teacher_targets(initial, [[5, 9, 9, 6]], [[11, 12, 13]], top_k=8, pad_id=0, batch_size=2, chunk_size=3)[0]
    adapted = teacher_targets(lm, [[5, 9, 9, 6]], [[11, 12, 13]], top_k=8, pad_id=0, batch_size=2, chunk_size=3)[0]
    torch.testing.assert_close(targets(True), ref.teacher_logp, rtol=0, atol=1e-6)
    torch.testing.assert_close(targets(False), adapted.teacher_logp, rtol=0, atol=1e-6)
    assert not torch.allclose(ref.teacher_logp, adapted.teacher_logp, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_updates_run_in_train_mode_so_gradient_checkpointing_recomputes(tmp_path, tiny_model_dir, checkpointing):
    """The update's forward runs in train mode (LoRA dropout and gradient checkpointing act
    only there), rollouts in eval mode. Before, the model stayed in eval mode (from_pretrained
    and the HF generator set it), so model.gradient_checkpointing saved no memory: a decoder
    layer's attention ran once per micro-batch either way. Now it runs twice with checkpointing
    (forward, then recomputed in backward), once without."""
    from sgpo.models import load_tokenizer
    from sgpo.trainer.trainer import PhaseTimer, Trainer

    tok = load_tokenizer(str(tiny_model_dir))
    # every row whole (system.share_prompt_forward would add a pass per micro-batch for the prompts)
    cfg = load_config(None, _sets(tmp_path, tiny_model_dir, "grpo", "training.max_steps=1", "system.micro_batch_size=64",
                                  f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                  "system.share_prompt_forward=false"))
    trainer = Trainer(cfg, problems=build_problems(ROWS, "test"), model=_tiny(tiny_model_dir), tokenizer=tok,
                      generator=AlternatingGenerator(tok))
    batch = trainer.rollout(PhaseTimer())
    assert not trainer.module.training
    # a pre-hook inside the checkpointed layer.forward (torch stops a recomputation early, once the
    # tensors backward needs are back, so a hook after a submodule's forward may never run again)
    attn = trainer.module.lm.get_base_model().model.layers[0].self_attn
    calls = []
    handle = attn.register_forward_pre_hook(lambda m, i: calls.append(m.training))
    trainer.update(batch.sequences)
    handle.remove()
    assert calls == [True] * (2 if checkpointing else 1)


# -- training every method ------------------------------------------------------------------

STRATEGY = "Add the ones digits, then the tens."
ROWS = [{"id": f"p{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b), "strategy": STRATEGY,
         "teacher_response": f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}."}
        for i, (a, b) in enumerate([(2, 3), (4, 4), (1, 6), (5, 2)])]


class AlternatingGenerator:
    """Scripted completions, right and wrong in turn, so every group's rewards vary and every
    method has a gradient on a tiny random model (which never samples a right answer)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def generate(self, prompts, sampling, n=1):
        out = []
        for ids, k in zip(prompts, [n] * len(prompts) if isinstance(n, int) else n):
            text = self.tok.decode(ids)
            row = next(r for r in ROWS if r["problem"] in text)
            answers = [row["answer"] if j % 2 == 0 else "0" for j in range(k)]
            texts = [f"So the answer is \\boxed{{{a}}}." for a in answers]
            out.append([Completion(t, self.tok(t, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id],
                                   "stop") for t in texts])
        return out


def _sets(tmp_path, tiny_model_dir, method, *extra):
    return ["data.path=unused", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
            f"algorithm.method={method}", "algorithm.samples_per_problem=6", "algorithm.group_guided=2",
            "training.prompts_per_step=4", "training.learning_rate=1e-2", "algorithm.weight_mode=constant",
            "algorithm.distill_on=all", "run.progress=false", "run.save_steps=0", f"run.output_dir={tmp_path / method}",
            *LORA, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sgpo", "grpo", "sft", "luffy", "imitation", "guided_rl"])
def test_every_method_trains_the_adapter_alone(tmp_path, tiny_model_dir, method):
    from sgpo.models import load_tokenizer
    from sgpo.trainer.trainer import Trainer

    tok = load_tokenizer(str(tiny_model_dir))
    extra = ["algorithm.teacher=initial"] if method == "sgpo" else []
    cfg = load_config(None, _sets(tmp_path, tiny_model_dir, method, "training.max_steps=2", *extra))
    trainer = Trainer(cfg, problems=build_problems(ROWS, "test"), model=_tiny(tiny_model_dir), tokenizer=tok,
                      generator=AlternatingGenerator(tok))
    assert trainer.teacher is None  # teacher: initial under LoRA loads no second copy
    res = trainer.train()
    assert len(res.history) == 2 and res.skipped_updates == 0
    initial = _tiny(tiny_model_dir).state_dict()
    state = res.model.state_dict()
    adapter = {k for k in state if ".lora_" in k}
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in state.items() if k not in adapter}
    assert base.keys() == initial.keys()
    changed_base = [k for k, v in base.items() if not torch.equal(v, initial[k])]
    assert not changed_base, f"{method}: base weights changed: {changed_base[:4]}"
    b = [k for k in adapter if ".lora_B." in k]
    assert all(torch.count_nonzero(state[k]) > 0 for k in b), f"{method}: an adapter B stayed zero"  # it trained
    final = res.output_dir / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)


@pytest.mark.slow
def test_final_adapter_and_merged_weights_load_as_models(tmp_path, tiny_model_dir, capsys):
    """final/ (the adapter) and final/merged (on request) load through sgpo.models.load_model,
    as `sgpo eval --model` does, and compute the trained policy's logits; `sgpo eval --model
    RUN/final` runs on the adapter folder (and --backend vllm asks for merged weights); a LoRA
    run's checkpoints hold the adapter's parameters only."""
    from safetensors.torch import load_file

    from sgpo.models import check_model_source, context_length, load_model, load_tokenizer
    from sgpo.trainer.trainer import Trainer

    tok = load_tokenizer(str(tiny_model_dir))
    cfg = load_config(None, _sets(tmp_path, tiny_model_dir, "grpo", "training.max_steps=2", "run.save_steps=2",
                                  "model.lora.save_merged=true"))
    res = Trainer(cfg, problems=build_problems(ROWS, "test"), model=_tiny(tiny_model_dir), tokenizer=tok,
                  generator=AlternatingGenerator(tok)).train()
    ckpt = load_file(res.output_dir / "checkpoint-2" / "model.safetensors")
    assert ckpt and all(".lora_" in k for k in ckpt)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = res.model(input_ids=ids).logits
        for folder in (res.output_dir / "final", res.output_dir / "final" / "merged"):
            check_model_source(str(folder), "--model")
            assert context_length(str(folder)) == context_length(str(tiny_model_dir))
            model = load_model(str(folder), dtype="float32")
            assert not hasattr(model, "peft_config") or not model.peft_config
            torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=0, atol=1e-5)
            assert load_tokenizer(str(folder)).eos_token == tok.eos_token
    bench = tmp_path / "toy.jsonl"
    bench.write_text("".join(json.dumps({"id": r["id"], "problem": r["problem"], "answer": r["answer"]}) + "\n"
                             for r in ROWS[:2]))
    from sgpo.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(res.output_dir / "final"), "--benchmarks", str(bench), "--num-samples", "1",
            "--max-new-tokens", "4", "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0  # `sgpo eval --model RUN/final` on the adapter folder
    assert json.loads((out / "results.json").read_text())["benchmarks"]["toy"]["n"] == 2
    capsys.readouterr()
    assert main([*argv[:-3], "--backend", "vllm", "--output-dir", str(tmp_path / "v")]) == 2
    assert "LoRA adapter folder; --backend vllm needs merged weights" in capsys.readouterr().err


# -- killed and resumed ----------------------------------------------------------------------


def _jsonl(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _resume_sets(tmp_path, tiny_model_dir, out):
    return [f"data.path={_jsonl(tmp_path)}", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
            "algorithm.method=sgpo", "algorithm.samples_per_problem=4", "algorithm.group_guided=2", "algorithm.max_new_tokens=6",
            "algorithm.distill_on=all", "algorithm.weight_mode=constant", "training.prompts_per_step=2",
            "training.learning_rate=1e-2", "training.max_steps=4", "run.save_steps=2", "run.progress=false",
            f"run.output_dir={out}", *LORA]


@pytest.mark.slow
def test_a_killed_lora_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, tiny_model_dir):
    """Real sampling (HF generate, seeded per step), SIGKILL after step 3 is logged (the last
    checkpoint is step 2), rerun: the final adapter equals a 4-step run's bit for bit."""
    from safetensors.torch import load_file

    from sgpo.trainer.trainer import train
    from tests.test_reliability_train import KILLER

    whole = train(load_config(None, _resume_sets(tmp_path, tiny_model_dir, tmp_path / "whole")))
    env = {**os.environ, "KILL_AFTER_STEP": "3", "PYTHONPATH": os.getcwd()}
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, *_resume_sets(tmp_path, tiny_model_dir, killed)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoint-2").is_dir() and not (killed / "final").exists()
    resumed = train(load_config(None, _resume_sets(tmp_path, tiny_model_dir, killed)))
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a = load_file(whole.output_dir / "final" / "adapter_model.safetensors")
    b = load_file(resumed.output_dir / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(torch.count_nonzero(v) for k, v in a.items() if "lora_B" in k)  # it trained
    losses = [h["loss"] for h in whole.history]
    assert [h["loss"] for h in resumed.history] == losses
