"""Checks that need a CUDA GPU (marker ``gpu``; skipped cleanly elsewhere). Run them all,
with a summary table, by ``bash scripts/gpu-check``:

- every method takes bf16 optimiser steps on CUDA (finite loss, the update ran);
- the chunked distillation loss needs far less CUDA memory than full logits;
- vLLM rollouts from token ids and the weight sync into the engine (skipped without vLLM);
- the rollout correction on real bf16 log-probs: a bf16 policy against float32 "engine"
  log-probs of the same tokens (the mismatch an engine's numerics make), in a training step;
- every loss.aggregation mode in a bf16 step; the throughput metrics (perf/*) of a CUDA step;
- DeepSpeed ZeRO-3 and FSDP through `accelerate launch` on the GPUs present give the same
  schedule, optimiser step count and weights as one plain process (ZeRO-3 skipped without
  DeepSpeed).
"""

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

METHODS = ("sgpo", "grpo", "sft", "luffy", "imitation", "guided_rl")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_steps_in_bf16_on_cuda(tmp_path, method, tiny_model_dir):
    """One bf16 step of each method on CUDA. With a random tiny model the rewards are all 0,
    so grpo and guided_rl have zero advantages (no gradient): for them the step must run and
    stay finite; the others must also move the weights."""
    from tests.test_trainer_e2e import _cfg, _problems, _state
    from sgpo.trainer.trainer import train

    initial = _state(str(tiny_model_dir))
    res = train(_cfg(tmp_path, method, str(tiny_model_dir), "model.dtype=bfloat16", "training.learning_rate=1e-3",
                     "training.max_steps=1"), problems=_problems())
    rec = res.history[0]
    assert next(res.model.parameters()).device.type == "cuda" and next(res.model.parameters()).dtype == torch.bfloat16
    assert rec["updates"] == 1 and rec["skipped"] == 0 and torch.isfinite(torch.tensor(rec["loss"]))
    if method not in ("grpo", "guided_rl"):
        moved = [n for n, p in res.model.state_dict().items() if not torch.equal(p.float().cpu(), initial[n].float())]
        assert moved
    # throughput of a CUDA step: tokens over rollout + update time, per device (one process here)
    assert rec["perf/total_tokens"] > 0 and rec["perf/tokens_per_s"] > 0
    assert rec["perf/tokens_per_s"] == pytest.approx(rec["perf/total_tokens"] / (rec["time_rollout"] + rec["time_update"]))
    assert rec["perf/throughput"] == pytest.approx(rec["perf/tokens_per_s"])  # one process: one device


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_every_aggregation_steps_in_bf16_on_cuda(tmp_path, aggregation, tiny_model_dir):
    """One bf16 SGPO step on CUDA under each loss.aggregation mode: finite loss, weights moved."""
    from tests.test_trainer_e2e import _cfg, _problems, _state
    from sgpo.trainer.trainer import train

    initial = _state(str(tiny_model_dir))
    res = train(_cfg(tmp_path, "sgpo", str(tiny_model_dir), "model.dtype=bfloat16", "training.learning_rate=1e-3",
                     "training.max_steps=1", f"loss.aggregation={aggregation}"), problems=_problems())
    rec = res.history[0]
    assert rec["skipped"] == 0 and torch.isfinite(torch.tensor(rec["loss"]))
    assert [n for n, p in res.model.state_dict().items() if not torch.equal(p.float().cpu(), initial[n].float())]


def test_rollout_correction_on_bf16_logprobs(tmp_path, tiny_model_dir):
    """A bf16 policy on CUDA trains on rollouts whose "engine" log-probs come from a float32 copy
    of it (what an engine with other numerics reports; vLLM itself is not needed): the trainer's
    bf16 pi_old differs from them by bf16 rounding, so the measured mismatch is > 0 but small, the
    token-level weights stay near 1, and the step is finite."""
    import copy

    from sgpo.data import build_problems
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.config import load_config
    from sgpo.trainer.metrics import StepMetrics
    from sgpo.trainer.trainer import PhaseTimer, Trainer
    from tests.test_rollout_correction_step import EngineGenerator
    from tests.test_trainer_step import ROWS

    tok = load_tokenizer(str(tiny_model_dir))
    policy = load_model(str(tiny_model_dir), dtype="bfloat16")
    engine = copy.deepcopy(policy).float().cuda()
    cfg = load_config(None, ["data.path=unused", f"model.name_or_path={tiny_model_dir}", "model.dtype=bfloat16",
                             "algorithm.method=grpo", "algorithm.samples_per_problem=4", "training.prompts_per_step=4",
                             "loss.rollout_is=token_truncate", "run.progress=false", "run.save_steps=0",
                             f"run.output_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, problems=build_problems(ROWS, "test"), model=policy, tokenizer=tok,
                      generator=EngineGenerator(tok, engine, shift=0.0))
    batch = trainer.rollout(PhaseTimer())
    metrics, updates = trainer.update(batch.sequences)
    rec = StepMetrics.build(trainer.accelerator, 1, batch, metrics, updates=len(updates))
    print({k: v for k, v in rec.items() if k.startswith("rollout/")})
    assert 0 < rec["rollout/logprob_abs_diff"] < 0.5
    assert 0.8 < rec["rollout/is_ratio_mean"] < 1.25 and rec["rollout/is_masked_frac"] < 0.5
    assert all(torch.isfinite(torch.tensor(u.loss)) for u in updates)


def test_chunked_distillation_memory_vs_full_logits_on_cuda():
    """Forward + backward of the distillation term at a 7B head's vocabulary (V = 152064),
    T = 4096 tokens, bf16: the full-logits reference holds several [T, V] float32 tensors
    (~2.5 GB each); the chunked path holds one chunk. Peak memory above the inputs must be at
    least 4x smaller (a measured-ratio benchmark lives in benchmarks/distill_memory.py)."""
    from benchmarks.distill_memory import _inputs, _step

    peaks = {}
    for path in ("chunked", "naive"):
        torch.cuda.empty_cache()
        x = _inputs(4096, vocab=152064, hidden_size=512, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(path, x, slice(0, 4096), chunk_size=1024)
        torch.cuda.synchronize()
        peaks[path] = torch.cuda.max_memory_allocated() - base
        del x
    assert peaks["chunked"] * 4 < peaks["naive"], peaks


def test_vllm_rollouts_from_token_ids_and_weight_sync(tiny_model_dir):
    """The colocated engine samples from the prompt ids, and after a weight sync greedy
    decoding follows the synced weights (identical to the HF greedy decode of those weights)."""
    pytest.importorskip("vllm")
    from sgpo.generation import SamplingConfig, encode_prompts
    from sgpo.generation.hf import HFGenerator
    from sgpo.generation.vllm import VLLMGenerator
    from sgpo.models import load_model, load_tokenizer

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29555"}.items():
        os.environ.setdefault(key, value)
    tok = load_tokenizer(str(tiny_model_dir))
    gen = VLLMGenerator(str(tiny_model_dir), tok, gpu_memory_utilization=0.2, max_model_len=512)
    ids = encode_prompts(tok, ["What is 2 + 3?", "Count to five."])
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    model = load_model(str(tiny_model_dir), dtype="bfloat16").cuda()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # other weights, so a sync that did nothing shows
    gen.sync_weights(model)
    got = [[c.token_ids for c in o] for o in gen.generate(ids, greedy)]
    want = [[c.token_ids for c in o] for o in HFGenerator(model, tok).generate(ids, greedy)]
    assert got == want
    sampled = gen.generate(ids, SamplingConfig(temperature=1.0, max_new_tokens=8, seed=0), n=[3, 0])
    assert [len(o) for o in sampled] == [3, 0]


def _launch_cuda(config: str, n: int, args: list[str]) -> list[str]:
    from tests.test_distributed import REPO, _free_port

    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / config),
            "--num_processes", str(n), "--mixed_precision", "no", "--main_process_port", str(_free_port()),
            "-m", *args]


@pytest.mark.parametrize("config", ["zero3.yaml", "fsdp.yaml"])
def test_sharded_training_matches_one_process_on_cuda(tmp_path, tiny_model_dir, config):
    """The shipped accelerate configs on every GPU present (one process per GPU, micro-batches
    of one sequence) against one plain process with one micro-batch: same lr schedule, 3 Adam
    steps, weights within 1e-5 (fp32; cuBLAS reduction order differs with shapes; a wrong
    schedule or an extra step moves weights by ~1e-3)."""
    if config == "zero3.yaml":
        pytest.importorskip("deepspeed")
    from tests.test_distributed import REPO, _outcome, _sft_data, _train_args

    n = torch.cuda.device_count()
    data = _sft_data(tmp_path / "sft.jsonl")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    prompts = 4 * n  # the global batch splits evenly over the processes
    extra = ["--set", f"training.prompts_per_step={prompts}"]
    runs = {"one": [sys.executable, "-m", *_train_args(tiny_model_dir, data, tmp_path / "one", prompts, "float32"), *extra],
            "sharded": [*_launch_cuda(config, n, _train_args(tiny_model_dir, data, tmp_path / "sharded", 1, "float32")),
                        *extra]}
    for name, cmd in runs.items():
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert res.returncode == 0, f"{name}: " + res.stdout[-3000:] + res.stderr[-3000:]
    one, sharded = _outcome(tmp_path / "one"), _outcome(tmp_path / "sharded")
    assert sharded["lr"] == one["lr"] and sharded["adam_steps"] == one["adam_steps"] == {3.0}
    for k, v in one["params"].items():
        torch.testing.assert_close(sharded["params"][k], v, rtol=0, atol=1e-5, msg=k)
