"""The core imports only torch and the standard library (checked in a fresh interpreter)."""

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "sgpo" / "core"


def test_core_does_not_import_heavy_packages():
    code = ("import sys, sgpo.core\n"
            "heavy = ('transformers', 'trl', 'accelerate', 'vllm', 'datasets', 'httpx')\n"
            "bad = [m for m in heavy if m in sys.modules]\n"
            "print(bad)\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_sources_import_only_torch_stdlib_and_core():
    allowed_roots = {"torch", "sgpo"} | set(sys.stdlib_module_names)
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed_roots, f"{path.name} imports {name}"
                assert not name.startswith("sgpo.") or name.startswith("sgpo.core"), f"{path.name} imports {name}"
