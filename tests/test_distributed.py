"""Two CPU processes under `accelerate launch` give the same loss and gradients as one
process on the same global batch (the token normaliser is global and DDP averaging is
undone), for a batch mixing every loss role."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")


def _run(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    _run([sys.executable, str(WORKER), str(tiny_model_dir), str(tmp_path / "one.pt")], env)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29517", str(WORKER), str(tiny_model_dir), str(tmp_path / "two.pt")]
    _run(launch, {**env, "ACCELERATE_USE_CPU": "true"})
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-10)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 0
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-9, atol=1e-12, msg=name)
