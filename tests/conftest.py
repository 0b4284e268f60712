import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_TELEMETRY", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# threads sleep instead of spinning at OpenMP barriers: with another busy process on the same
# cores, spinning slows torch on CPU by 10x or more
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The shared data folder beside the repository; SGPO_SHARED_DIR points elsewhere (e.g. a clone in another folder).
SHARED = Path(os.environ.get("SGPO_SHARED_DIR") or REPO.parent / "shared")
BENCHMARKS = SHARED / "data" / "benchmarks"


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS.exists():
        pytest.skip(f"benchmark data not found at {BENCHMARKS}")
    return BENCHMARKS


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as safetensors (converted once into the user cache)."""
    from sgpo.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer: fast end-to-end tests of real code paths.
    $SGPO_TINY_VOCAB names a folder with that tokenizer alone (scripts/gpu-check carries one)."""
    from sgpo.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model", vocab_from=os.environ.get("SGPO_TINY_VOCAB"))
