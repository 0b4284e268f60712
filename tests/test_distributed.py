"""Several processes compute what one process computes.

- Two CPU processes under `accelerate launch` give the same loss and gradients as one process
  on the same global batch (the token normaliser is global and DDP averaging is undone), for
  a batch mixing every loss role (tests/dist_worker.py drives one accumulation).
- The command users launch, `accelerate launch --multi_gpu --num_processes 2 -m sgpo.cli
  train` (DDP) and `accelerate launch --config_file configs/accelerate/fsdp.yaml ...` (FSDP2),
  on CPU with gloo: the same learning-rate schedule, the same number of optimiser steps and
  the same parameters after three steps as `python -m sgpo.cli train` in one process,
  whatever the micro-batch size; and they exit cleanly.
- DeepSpeed ZeRO-3 (configs/accelerate/zero3.yaml) runs on CPU in one process: with four
  micro-batches per update the engine still steps once per update (three Adam steps, the
  same weights), and ``teacher: initial`` gets its own engine instead of a deep copy of the
  partitioned policy. (With two processes on CPU accelerate 1.15 reports one process under
  DeepSpeed, so the multi-process ZeRO-3 comparison runs in the GPU check.)
- The gradient-accumulation contract with accelerate (what DeepSpeed and FSDP rely on and
  DDP on CPU cannot show): ``sync_gradients`` is False on every micro-batch but the last.

The runs use ``sft`` (no sampling, so nothing random differs between the runs) in float64, so
the only differences are the order of floating-point sums over micro-batches and processes.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = WORKER.parents[1]


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true"}


def _launch(n: int, *args: str, config_file: str = "") -> list[str]:
    """`accelerate launch` on CPU with gloo, as a user types it (two processes: DDP, or the
    shipped ``config_file``) or plain python (one)."""
    if n == 1:
        return [sys.executable, "-m", *args]
    mode = ["--config_file", config_file] if config_file else ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    return [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(n),
            "--mixed_precision", "no", "--main_process_port", str(_free_port()), "-m", *args]


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, tmp_path):
    _run(_launch(1, "tests.dist_worker", str(tiny_model_dir), str(tmp_path / "one.pt")), _env())
    _run(_launch(2, "tests.dist_worker", str(tiny_model_dir), str(tmp_path / "two.pt")), _env())
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-10)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 0
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_two_processes_with_shared_prompts_match_one_with_whole_rows(tiny_model_dir, tmp_path):
    """DDP with the shared-prompt forward (two processes, micro-batches of four rows over three
    prompts) against one process running every row whole: the same loss and gradients, to
    the float32 rounding of the model's RMSNorm (tests/test_shared_prompt.py)."""
    _run(_launch(1, "tests.dist_worker", str(tiny_model_dir), str(tmp_path / "one.pt"), "0"), _env())
    _run(_launch(2, "tests.dist_worker", str(tiny_model_dir), str(tmp_path / "two.pt"), "1"), _env())
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-9)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 0
    for name, g in one["grads"].items():
        scale = float(g.abs().max())
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-6, atol=1e-6 * scale, msg=name)


def _sft_data(path: Path) -> Path:
    rows = [{"id": f"p{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b),
             "teacher_response": f"{a} + {b} = {a + b}" + " so the answer is" * (i % 3) + f" \\boxed{{{a + b}}}."}
            for i, (a, b) in enumerate([(2, 3), (4, 4), (1, 6), (5, 2), (3, 3), (2, 6), (4, 1), (7, 2)])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_args(model: Path, data: Path, out: Path, micro_batch_size: int, dtype: str = "float64") -> list[str]:
    sets = ["algorithm.method=sft", f"data.path={data}", f"model.name_or_path={model}", f"model.dtype={dtype}",
            "training.max_steps=3", "training.prompts_per_step=4", "training.learning_rate=1e-3",
            "training.warmup_steps=2", f"system.micro_batch_size={micro_batch_size}", "training.max_grad_norm=1.0",
            "run.save_steps=0", "run.progress=false", "run.save_total_limit=1"]
    return ["sgpo.cli", "train", "--output-dir", str(out), "--no-resume", *[a for s in sets for a in ("--set", s)]]


def _adam_steps(out: Path) -> set[float]:
    """Adam's step count in the last checkpoint: accelerate's optimizer.bin, or DeepSpeed's
    ZeRO optimizer states."""
    files = sorted(out.glob("checkpoint-*/optimizer*.bin")) or sorted(out.glob("checkpoint-*/*/*optim_states.pt"))
    assert len(files) == 1, list(out.glob("checkpoint-*/**"))
    state = torch.load(files[0], weights_only=False)
    if "optimizer_state_dict" in state:  # ZeRO: {"optimizer_state_dict": {"optimizer_state_dict": {...}}}
        state = state["optimizer_state_dict"]["optimizer_state_dict"]
    return {float(s["step"]) for s in state["state"].values()}


def _outcome(out: Path) -> dict:
    from safetensors.torch import load_file

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    adam_steps = _adam_steps(out)
    return {"lr": [x["lr"] for x in lines], "loss": [x["loss"] for x in lines], "adam_steps": adam_steps,
            "params": load_file(out / "final" / "model.safetensors")}


@pytest.mark.slow
def test_cli_train_two_processes_match_one(tiny_model_dir, tmp_path):
    """1 process with one micro-batch per update, 1 process with micro-batches of one
    sequence, 2 processes (DDP, FSDP) with micro-batches of one: identical runs."""
    from safetensors.torch import load_file

    data = _sft_data(tmp_path / "sft.jsonl")
    fsdp = str(REPO / "configs" / "accelerate" / "fsdp.yaml")
    runs = {"one": (1, 4, ""), "one_micro": (1, 1, ""), "two_micro": (2, 1, ""), "fsdp_micro": (2, 1, fsdp)}
    for name, (procs, mbs, config_file) in runs.items():
        args = _train_args(tiny_model_dir, data, tmp_path / name, mbs)
        res = _run(_launch(procs, *args, config_file=config_file), _env())
        assert "3 steps logged" in res.stdout, res.stdout[-2000:]
    got = {name: _outcome(tmp_path / name) for name in runs}
    initial = load_file(tiny_model_dir / "model.safetensors")
    ref = got["one"]
    for name in ("one_micro", "two_micro", "fsdp_micro"):  # the runs agree with each other ...
        assert got[name]["lr"] == ref["lr"], name
        assert got[name]["adam_steps"] == ref["adam_steps"], name
    # ... and with the schedule: constant_with_warmup, warmup 2, lr 1e-3: step s = 0, 1, 2 uses
    # 1e-3 * min(1, s / 2)
    assert ref["lr"] == pytest.approx([0.0, 5e-4, 1e-3], abs=1e-15)
    assert ref["adam_steps"] == {3.0}  # one optimiser step per training step
    assert any(not torch.equal(ref["params"][k], initial[k]) for k in initial)  # training moved the weights
    for name in ("one_micro", "two_micro", "fsdp_micro"):
        other = got[name]
        assert other["loss"] == pytest.approx(ref["loss"], rel=1e-6), name  # logged through float32 tensors
        # float64: micro-batch and process sums only reorder additions (~1e-16 relative each;
        # measured differences after three steps: 1.4e-17). A wrong schedule or an extra Adam
        # step moves weights by ~lr = 1e-4..1e-3, so 1e-12 separates the two by eight decades.
        for k, v in ref["params"].items():
            torch.testing.assert_close(other["params"][k], v, rtol=0, atol=1e-12, msg=f"{name}: {k}")


def test_accumulation_sets_sync_gradients_on_the_last_micro_batch_only(tiny_model_dir):
    """accelerate's contract, which DeepSpeed reads as its accumulation boundary (the engine
    steps the optimiser in ``accelerator.backward`` whenever ``sync_gradients`` is True):
    with three micro-batches, the boundary comes once, at the third backward."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from tests.dist_worker import fixed_batch
    from sgpo.core import LossSettings
    from sgpo.trainer.loss import PolicyLoss
    from sgpo.trainer.update import accumulate_gradients

    acc = Accelerator(cpu=True)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    module = acc.prepare(PolicyLoss(lm, LossSettings(), temperature=1.0, chunk_size=5))
    seen = []
    backward = acc.backward

    def recording_backward(loss, **kwargs):
        seen.append(acc.sync_gradients)
        backward(loss, **kwargs)

    acc.backward = recording_backward
    accumulate_gradients(acc, module, fixed_batch(lm.config.vocab_size)[:6], micro_batch_size=2, pad_id=0,
                         normalizer="all")
    assert seen == [False, False, True]
    assert acc.sync_gradients  # restored for code outside the update


def _deepspeed_env() -> dict:
    # DeepSpeed on CPU: its CPU accelerator, gloo; accelerate must not be told "cpu" (that
    # switches DeepSpeed off)
    env = {k: v for k, v in _env().items() if k != "ACCELERATE_USE_CPU"}
    return {**env, "DS_ACCELERATOR": "cpu", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def _zero3(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / "zero3.yaml"), "--num_processes", "1", "--mixed_precision", "no",
            "--main_process_port", str(_free_port()), "-m", *args]


@pytest.mark.slow
def test_cli_train_zero3_steps_once_per_update(tiny_model_dir, tmp_path):
    """ZeRO-3 with micro-batches of one sequence (four per update) trains exactly like one
    plain process with the whole update in one micro-batch. Before the fix the engine stepped
    at every micro-batch: 12 Adam steps instead of 3, weights 4.7e-3 away."""
    pytest.importorskip("deepspeed")
    data = _sft_data(tmp_path / "sft.jsonl")
    _run(_launch(1, *_train_args(tiny_model_dir, data, tmp_path / "one", 4, dtype="float32")), _env())
    _run(_zero3(*_train_args(tiny_model_dir, data, tmp_path / "zero3", 1, dtype="float32")), _deepspeed_env())
    ref, z3 = _outcome(tmp_path / "one"), _outcome(tmp_path / "zero3")
    assert z3["adam_steps"] == ref["adam_steps"] == {3.0}
    assert z3["lr"] == ref["lr"] == pytest.approx([0.0, 5e-4, 1e-3], abs=1e-15)
    # float32 (DeepSpeed keeps fp32 master weights in flat buffers and reduces in its own
    # order): measured 6e-8 apart; one extra Adam step moves weights by ~lr = 1e-3
    for k, v in ref["params"].items():
        torch.testing.assert_close(z3["params"][k], v, rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_teacher_initial_under_zero3(tiny_model_dir, tmp_path):
    """`teacher: initial` under ZeRO-3: a deep copy of the partitioned policy failed
    ('Parameter' object has no attribute 'ds_status'); the teacher is now loaded from the
    model path and prepared as its own inference engine."""
    pytest.importorskip("deepspeed")
    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} + 2?", "answer": str(i + 2),
                                        "strategy": "Add the ones digits first."}) + "\n" for i in range(4)))
    sets = ["algorithm.method=sgpo", f"data.path={data}", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
            "training.max_steps=2", "training.prompts_per_step=2", "algorithm.samples_per_problem=4", "algorithm.group_guided=2",
            "algorithm.max_new_tokens=8", "algorithm.distill_on=all", "algorithm.weight_mode=constant",
            "algorithm.teacher=initial", "run.save_steps=0", "run.progress=false"]
    out = tmp_path / "sgpo"
    _run(_zero3("sgpo.cli", "train", "--output-dir", str(out), *[a for x in sets for a in ("--set", x)]),
         _deepspeed_env())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(x["distill/tokens"] > 0 and x["skipped"] == 0 for x in lines)


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "final" / "adapter_model.safetensors")


LORA_SETS = ["--set", "model.lora.rank=4", "--set", "model.lora.alpha=8.0"]


@pytest.mark.slow
def test_cli_train_lora_under_ddp_and_fsdp_matches_one_process(tiny_model_dir, tmp_path):
    """LoRA (model.lora) through `accelerate launch`: two processes under DDP and under FSDP2
    with micro-batches of one train the adapter exactly as one process with the whole update
    in one micro-batch (same schedule, same Adam steps, adapters 1e-12 apart in float64)."""
    data = _sft_data(tmp_path / "sft.jsonl")
    fsdp = str(REPO / "configs" / "accelerate" / "fsdp.yaml")
    runs = {"one": (1, 4, ""), "two_micro": (2, 1, ""), "fsdp_micro": (2, 1, fsdp)}
    for name, (procs, mbs, config_file) in runs.items():
        args = _train_args(tiny_model_dir, data, tmp_path / name, mbs) + LORA_SETS
        res = _run(_launch(procs, *args, config_file=config_file), _env())
        assert "3 steps logged" in res.stdout, res.stdout[-2000:]
    ref = _adapter(tmp_path / "one")
    assert ref and all(".lora_" in k for k in ref)
    assert any(torch.count_nonzero(v) for k, v in ref.items() if "lora_B" in k)  # the adapter trained
    lines = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in runs}
    for name in ("two_micro", "fsdp_micro"):
        assert [x["lr"] for x in lines[name]] == [x["lr"] for x in lines["one"]], name
        other = _adapter(tmp_path / name)
        assert other.keys() == ref.keys(), name
        for k, v in ref.items():
            torch.testing.assert_close(other[k], v, rtol=0, atol=1e-12, msg=f"{name}: {k}")


@pytest.mark.slow
def test_cli_train_lora_under_zero3_matches_one_process(tiny_model_dir, tmp_path):
    """LoRA under DeepSpeed ZeRO-3 (one CPU process, four micro-batches per update) trains the
    adapter as one plain process does (float32: measured within 1e-6)."""
    pytest.importorskip("deepspeed")
    data = _sft_data(tmp_path / "sft.jsonl")
    _run(_launch(1, *_train_args(tiny_model_dir, data, tmp_path / "one", 4, dtype="float32"), *LORA_SETS), _env())
    _run(_zero3(*_train_args(tiny_model_dir, data, tmp_path / "zero3", 1, dtype="float32"), *LORA_SETS),
         _deepspeed_env())
    ref, z3 = _adapter(tmp_path / "one"), _adapter(tmp_path / "zero3")
    assert z3.keys() == ref.keys() and ref
    for k, v in ref.items():
        torch.testing.assert_close(z3[k], v, rtol=0, atol=1e-6, msg=k)
